/**
 * Alert rules changed at run time (issue: operations): GET/PUT /api/v1/admin/alert-rules, validated,
 * stored in PostgreSQL, applied by every instance through the invalidation channel (and read at
 * start by one started later); administrators only.
 */
import type { LightMyRequestResponse } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  effectiveRules,
  type RuleOverride,
  rulesToEvaluate,
  validateChanges,
} from '../src/platform/observability/alert-rule-store.js';
import type { AlertRule } from '../src/platform/observability/alert-rules.js';
import {
  type AlertState,
  DEFAULT_ALERT_RULES,
  PerformanceTracker,
} from '../src/platform/observability/tracker.js';
import { type SignedUp, signUp, startTestApp, type TestApp } from './helpers/app.js';
import { callApi, until, useTestApp } from './helpers/fixture.js';

const override = (o: Partial<RuleOverride> & { name: string }): RuleOverride => ({
  threshold: null,
  for_seconds: null,
  min_samples: null,
  severity: null,
  enabled: true,
  updated_at: '2026-12-07T00:00:00.000Z',
  updated_by: null,
  ...o,
});

describe('effective rules', () => {
  it('apply an override over the code values, keep the defaults visible, and leave out disabled rules', () => {
    const overrides = [
      override({ name: 'error_rate_high', threshold: 0.05, for_seconds: 600 }),
      override({ name: 'cpu_high', enabled: false }),
    ];
    const effective = effectiveRules(DEFAULT_ALERT_RULES, overrides);
    const error = effective.find((r) => r.name === 'error_rate_high');
    const code = DEFAULT_ALERT_RULES.find((r) => r.name === 'error_rate_high') as AlertRule;
    expect(error).toMatchObject({ threshold: 0.05, for_seconds: 600, overridden: true });
    expect(error?.defaults.threshold).toBe(code.threshold);
    expect(error?.min_samples).toBe(code.minSamples);
    expect(effective.find((r) => r.name === 'cpu_high')?.enabled).toBe(false);
    const evaluated = rulesToEvaluate(DEFAULT_ALERT_RULES, overrides);
    expect(evaluated.map((r) => r.name)).not.toContain('cpu_high');
    expect(evaluated).toHaveLength(DEFAULT_ALERT_RULES.length - 1);
    expect(evaluated.find((r) => r.name === 'error_rate_high')).toMatchObject({
      threshold: 0.05,
      forSeconds: 600,
    });
  });

  it('validation names the field: unknown rule, changed twice, a fraction above 1, reset with settings', () => {
    expect(validateChanges(DEFAULT_ALERT_RULES, [{ name: 'nope' }])[0]?.[0]).toBe('body.rules.0.name');
    expect(
      validateChanges(DEFAULT_ALERT_RULES, [
        { name: 'cpu_high' },
        { name: 'cpu_high', enabled: false },
      ])[0]?.[0],
    ).toBe('body.rules.1.name');
    expect(validateChanges(DEFAULT_ALERT_RULES, [{ name: 'error_rate_high', threshold: 5 }])[0]?.[0]).toBe(
      'body.rules.0.threshold',
    );
    expect(
      validateChanges(DEFAULT_ALERT_RULES, [{ name: 'cpu_high', reset: true, threshold: 0.5 }])[0]?.[0],
    ).toBe('body.rules.0.reset');
    expect(validateChanges(DEFAULT_ALERT_RULES, [{ name: 'cpu_high', threshold: 0.5 }])).toEqual([]);
  });

  it('a firing rule turned off is resolved, so nothing downstream keeps it open', () => {
    let now = Date.parse('2026-12-07T00:00:00Z');
    const seen: AlertState['state'][] = [];
    const rule: AlertRule = {
      name: 'breakers',
      metric: 'breaker:open',
      comparison: 'gt',
      threshold: 0,
      window: '5m',
      minSamples: 1,
      severity: 'critical',
    };
    const tracker = new PerformanceTracker(
      { l1: () => ({ hits: 0, misses: 0 }), breakers: () => ({ l2: 'open' }) },
      [rule],
      (state) => seen.push(state.state),
      () => now,
    );
    tracker.tick();
    now += 5_000;
    tracker.tick();
    expect(seen).toEqual(['firing']);
    tracker.setRules([]);
    expect(seen).toEqual(['firing', 'ok']);
    expect(tracker.alertStates()).toEqual([]);
    // Turned on again with a threshold it does not breach: stays quiet.
    tracker.setRules([{ ...rule, threshold: 5 }]);
    now += 5_000;
    tracker.tick();
    expect(seen).toEqual(['firing', 'ok']);
    expect(tracker.alertStates()[0]?.state).toBe('ok');
  });
});

describe('GET/PUT /api/v1/admin/alert-rules across instances', () => {
  const fx = useTestApp();
  const apps: TestApp[] = [];
  let a: TestApp;
  let b: TestApp;
  let admin: SignedUp;
  let user: SignedUp;

  const call = (t: TestApp, who: SignedUp | null, method: 'GET' | 'PUT', payload?: object) =>
    callApi(t, who, method, '/admin/alert-rules', payload);
  const rule = (res: LightMyRequestResponse, name: string) =>
    (res.json().items as { name: string; threshold: number; enabled: boolean; overridden: boolean }[]).find(
      (r) => r.name === name,
    );

  beforeAll(async () => {
    a = fx.t;
    b = await startTestApp({ databaseUrl: fx.db.url });
    apps.push(b);
    admin = await signUp(a.app);
    await fx.sql.query(`UPDATE users SET role = 'admin' WHERE id = $1`, [admin.id]);
    user = await signUp(a.app);
  }, 60_000);

  afterAll(async () => {
    for (const t of apps) await t.close();
  });

  it('is for administrators only', async () => {
    expect((await call(a, null, 'GET')).statusCode).toBe(401);
    expect((await call(a, user, 'GET')).statusCode).toBe(403);
    expect((await call(a, user, 'PUT', { rules: [{ name: 'cpu_high', enabled: false }] })).statusCode).toBe(
      403,
    );
    const { rows } = await fx.sql.query('SELECT count(*)::int AS n FROM alert_rule_overrides');
    expect(rows[0].n).toBe(0);
    const list = await call(a, admin, 'GET');
    expect(list.statusCode).toBe(200);
    expect(list.json().items).toHaveLength(DEFAULT_ALERT_RULES.length);
    expect(list.json().items.every((r: { overridden: boolean }) => !r.overridden)).toBe(true);
  });

  it('a change on A is stored, applied on A before it answers, on B when it hears it, and on C at start', async () => {
    const changed = await call(a, admin, 'PUT', {
      rules: [
        { name: 'error_rate_high', threshold: 0.05, for_seconds: 300 },
        { name: 'cpu_high', enabled: false },
      ],
    });
    expect(changed.statusCode, changed.body).toBe(200);
    expect(rule(changed, 'error_rate_high')).toMatchObject({ threshold: 0.05, overridden: true });
    expect(rule(changed, 'cpu_high')).toMatchObject({ enabled: false, overridden: true });
    const { rows } = await fx.sql.query(
      'SELECT name, updated_by::text AS by FROM alert_rule_overrides ORDER BY name',
    );
    expect(rows).toEqual([
      { name: 'cpu_high', by: admin.id },
      { name: 'error_rate_high', by: admin.id },
    ]);

    await until(
      async () => rule(await call(b, admin, 'GET'), 'error_rate_high')?.threshold === 0.05,
      10_000,
      'B to apply the change',
    );
    expect(rule(await call(b, admin, 'GET'), 'cpu_high')?.enabled).toBe(false);

    const c = await startTestApp({ databaseUrl: fx.db.url });
    apps.push(c);
    expect(rule(await call(c, admin, 'GET'), 'error_rate_high')?.threshold).toBe(0.05);

    // A later change of one setting keeps the others.
    const more = await call(b, admin, 'PUT', { rules: [{ name: 'error_rate_high', min_samples: 500 }] });
    expect(rule(more, 'error_rate_high')).toMatchObject({ threshold: 0.05, min_samples: 500 });

    // Reset: the code's values, everywhere.
    const reset = await call(a, admin, 'PUT', {
      rules: [
        { name: 'error_rate_high', reset: true },
        { name: 'cpu_high', reset: true },
      ],
    });
    expect(reset.statusCode).toBe(200);
    expect(reset.json().items.every((r: { overridden: boolean }) => !r.overridden)).toBe(true);
    await until(
      async () => {
        const answers = await Promise.all([b, c].map((t) => call(t, admin, 'GET')));
        return answers.every((res) => res.json().items.every((r: { overridden: boolean }) => !r.overridden));
      },
      10_000,
      'B and C to apply the reset',
    );
  });

  it('refuses what is not valid, naming the field, and changes nothing', async () => {
    const cases: [object, string][] = [
      [{ rules: [{ name: 'no_such_rule', threshold: 1 }] }, 'body.rules.0.name'],
      [{ rules: [{ name: 'error_rate_high', threshold: 3 }] }, 'body.rules.0.threshold'],
      [{ rules: [{ name: 'cpu_high', threshold: -1 }] }, 'body.rules.0.threshold'],
      [{ rules: [{ name: 'cpu_high', severity: 'page-everyone' }] }, 'body.rules.0.severity'],
      [{ rules: [{ name: 'cpu_high', reset: true, enabled: false }] }, 'body.rules.0.reset'],
      [{ rules: [{ name: 'cpu_high', colour: 'red' }] }, 'body.rules.0.colour'],
      [{ rules: [] }, 'body.rules'],
    ];
    for (const [payload, field] of cases) {
      const res = await call(a, admin, 'PUT', payload);
      expect(res.statusCode, JSON.stringify(payload)).toBe(400);
      const fields = (res.json().error.details as { field: string }[]).map((d) => d.field);
      expect(fields, JSON.stringify(payload)).toContain(field);
    }
    const { rows } = await fx.sql.query('SELECT count(*)::int AS n FROM alert_rule_overrides');
    expect(rows[0].n).toBe(0);
  });
});
