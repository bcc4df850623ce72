import { readFile, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { hostname } from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ALERT_RULES, type AlertRule } from '../src/platform/observability/alert-rules.js';
import {
  AlertmanagerNotifier,
  alertmanagerNotifications,
  alertmanagerUrls,
} from '../src/platform/observability/alertmanager.js';
import { PerformanceTracker, type ProcessSource } from '../src/platform/observability/tracker.js';
import { signUp, startTestApp, type TestApp } from './helpers/app.js';
import { useTestDatabase } from './helpers/fixture.js';
import { runCommand } from './helpers/live.js';
import { type Daemon, getJson, haveBinary, startAlertmanager, until } from './helpers/prometheus.js';

/** An alert as Alertmanager's v2 API lists it (the fields the tests read). */
interface ListedAlert {
  labels: Record<string, string>;
  annotations: Record<string, string>;
  startsAt: string;
  endsAt: string;
  fingerprint: string;
  status: { state: string };
}

/** What Alertmanager's webhook receiver posts: one notification per group. */
interface WebhookNotification {
  status: 'firing' | 'resolved';
  alerts: { status: string; labels: Record<string, string>; startsAt: string; endsAt: string }[];
}

const SECOND = 1_000;
const MINUTE = 60 * SECOND;

const listed = async (am: Daemon, alertname: string) => {
  const alerts = await getJson<ListedAlert[]>(
    `${am.baseUrl}/api/v2/alerts?filter=${encodeURIComponent(`alertname="${alertname}"`)}`,
  );
  if (!alerts) throw new Error(`Alertmanager did not answer:\n${am.output()}`);
  return alerts;
};

const counted = async (result: 'sent' | 'failed') =>
  (await alertmanagerNotifications.get()).values.find((v) => v.labels.result === result)?.value ?? 0;

const present = await haveBinary('prometheus-alertmanager', 'prometheus-alertmanager');

describe.skipIf(!present)('alerts delivered to a real Alertmanager', () => {
  // A person's view: Alertmanager's webhook receiver posts here what it would route onwards.
  const received: WebhookNotification[] = [];
  let webhook: Server;
  let am: Daemon;

  beforeAll(async () => {
    webhook = createServer((req, res) => {
      let body = '';
      req.on('data', (d: Buffer) => {
        body += d.toString();
      });
      req.on('end', () => {
        received.push(JSON.parse(body) as WebhookNotification);
        res.end();
      });
    });
    await new Promise<void>((r) => webhook.listen(0, '127.0.0.1', r));
    const { port } = webhook.address() as AddressInfo;
    am = await startAlertmanager({ webhookUrl: `http://127.0.0.1:${port}/hook` });
  }, 90_000);

  afterAll(async () => {
    await am?.close();
    await new Promise((r) => webhook?.close(r));
  });

  /**
   * The tracker with a clock the test owns, started ten minutes in the past so that every time it
   * reports (startsAt, endsAt) is already past for Alertmanager: a resolution is a resolution.
   */
  function trackerWith(rule: AlertRule, notifier: AlertmanagerNotifier) {
    let now = Date.now() - 10 * MINUTE;
    const proc: ProcessSource = { cpuSeconds: () => 0, residentBytes: () => 1, memoryLimitBytes: () => 100 };
    const tracker = new PerformanceTracker(
      null,
      [rule],
      (state) => notifier.notify(state),
      () => now,
      proc,
    );
    return {
      tracker,
      advance: (ms: number) => {
        now += ms;
      },
      at: () => new Date(now).toISOString(),
    };
  }

  const errorRule = (name: string): AlertRule => ({
    name,
    metric: 'all:error_rate',
    comparison: 'gt',
    threshold: 0.5,
    window: '5m',
    minSamples: 3,
    forSeconds: 60,
    severity: 'critical',
    summary: 'Most requests fail',
  });

  it('a firing alert arrives with its labels and annotations; its resolution arrives once, with endsAt', async () => {
    const notifier = new AlertmanagerNotifier({
      urls: [am.baseUrl],
      instance: 'velro-test:3000',
      resendSeconds: 60,
      runbookUrl: 'https://docs.example.com/velro/README.md',
    });
    const { tracker, advance, at } = trackerWith(errorRule('test_errors_fire_and_resolve'), notifier);
    const sentBefore = await counted('sent');

    for (let i = 0; i < 4; i++) tracker.record('fast', 'GET /a', 1_000, 503);
    tracker.evaluateAlerts();
    expect(tracker.alertStates()[0]?.state).toBe('pending');
    await notifier.idle();
    expect(await listed(am, 'test_errors_fire_and_resolve')).toEqual([]); // pending is not sent

    advance(61 * SECOND);
    tracker.record('fast', 'GET /a', 1_000, 503);
    tracker.evaluateAlerts();
    const firedAt = at();
    expect(tracker.alertStates()[0]?.state).toBe('firing');
    await notifier.idle();

    const [alert, ...others] = await listed(am, 'test_errors_fire_and_resolve');
    expect(others).toEqual([]);
    expect(alert?.labels).toEqual({
      alertname: 'test_errors_fire_and_resolve',
      severity: 'critical',
      instance: 'velro-test:3000',
      service: 'velro',
    });
    expect(alert?.annotations).toEqual({
      summary: 'Most requests fail',
      value: '1',
      threshold: '> 50 %',
      runbook_url: 'https://docs.example.com/velro/README.md#test_errors_fire_and_resolve',
    });
    expect(Date.parse(alert?.startsAt ?? '')).toBe(Date.parse(firedAt));
    expect(alert?.status.state).toBe('active');
    // Valid for four re-send periods (60 s each): if nobody re-sends it, it resolves by itself.
    const validFor = Date.parse(alert?.endsAt ?? '') - Date.now();
    expect(validFor).toBeGreaterThan(2 * MINUTE);
    expect(validFor).toBeLessThanOrEqual(4 * MINUTE);
    expect(await counted('sent')).toBeGreaterThan(sentBefore);

    // Routed onwards as one firing notification.
    const firing = await until('the firing notification at the webhook', 30_000, async () =>
      received.find(
        (n) =>
          n.status === 'firing' &&
          n.alerts.some((a) => a.labels.alertname === 'test_errors_fire_and_resolve'),
      ),
    );
    expect(firing.alerts).toHaveLength(1);

    // The window empties: not enough samples any more, the alert resolves.
    advance(6 * MINUTE);
    tracker.evaluateAlerts();
    const resolvedAt = at();
    expect(tracker.alertStates()[0]?.state).toBe('ok');
    await notifier.idle();
    expect(notifier.undelivered()).toBe(0);

    // Alertmanager no longer lists it as active, and tells the receiver it is resolved.
    expect(await listed(am, 'test_errors_fire_and_resolve')).toEqual([]);
    const resolved = await until('the resolved notification at the webhook', 30_000, async () =>
      received.find(
        (n) =>
          n.status === 'resolved' &&
          n.alerts.some((a) => a.labels.alertname === 'test_errors_fire_and_resolve'),
      ),
    );
    expect(resolved.alerts[0]?.status).toBe('resolved');
    expect(Date.parse(resolved.alerts[0]?.endsAt ?? '')).toBe(Date.parse(resolvedAt));
    expect(Date.parse(resolved.alerts[0]?.startsAt ?? '')).toBe(Date.parse(firedAt));

    // A resolved alert is forgotten after delivery: resending sends nothing for it.
    const sent = await counted('sent');
    notifier.resend();
    await notifier.idle();
    expect(await counted('sent')).toBe(sent);
    notifier.stop();
  }, 120_000);

  it('re-sending a firing alert keeps one alert with its first startsAt, and people are told once', async () => {
    const notifier = new AlertmanagerNotifier({
      urls: [am.baseUrl],
      instance: 'velro-test:3000',
      labels: { process: '2' },
      resendSeconds: 60,
      runbookUrl: 'README.md',
    });
    const { tracker, advance, at } = trackerWith(errorRule('test_errors_resent'), notifier);
    for (let i = 0; i < 4; i++) tracker.record('fast', 'GET /a', 1_000, 503);
    tracker.evaluateAlerts();
    advance(61 * SECOND);
    tracker.record('fast', 'GET /a', 1_000, 500);
    tracker.evaluateAlerts();
    const firedAt = at();
    await notifier.idle();
    const first = await listed(am, 'test_errors_resent');
    expect(first).toHaveLength(1);
    expect(first[0]?.labels).toEqual({
      alertname: 'test_errors_resent',
      severity: 'critical',
      instance: 'velro-test:3000',
      service: 'velro',
      process: '2',
    });

    // Still firing on later evaluations (no new notification from the tracker), and re-sent.
    const sentBefore = await counted('sent');
    for (let i = 0; i < 5; i++) {
      advance(5 * SECOND);
      tracker.record('fast', 'GET /a', 1_000, 503);
      tracker.evaluateAlerts();
      notifier.resend();
      await notifier.idle();
    }
    expect(await counted('sent')).toBe(sentBefore + 5);
    const after = await listed(am, 'test_errors_resent');
    expect(after).toHaveLength(1);
    expect(after[0]?.fingerprint).toBe(first[0]?.fingerprint);
    expect(Date.parse(after[0]?.startsAt ?? '')).toBe(Date.parse(firedAt));
    // Each re-send moves the alert's expiry forward, which is what keeps it active.
    expect(Date.parse(after[0]?.endsAt ?? '')).toBeGreaterThanOrEqual(Date.parse(first[0]?.endsAt ?? ''));

    // Once the receiver heard of it, wait out two more group intervals (an absence cannot be
    // awaited): Alertmanager told its receiver once, not once per re-send.
    await until('the firing notification at the webhook', 30_000, async () =>
      received.find(
        (n) => n.status === 'firing' && n.alerts.some((a) => a.labels.alertname === 'test_errors_resent'),
      ),
    );
    await new Promise((r) => setTimeout(r, 3_000));
    const firings = received.filter(
      (n) => n.status === 'firing' && n.alerts.some((a) => a.labels.alertname === 'test_errors_resent'),
    );
    expect(firings).toHaveLength(1);
    notifier.stop();
  }, 120_000);

  it('with one Alertmanager down, the other gets the alert at once; the post to the down one is retried with backoff until it is back', async () => {
    const down = await startAlertmanager();
    const { port, dir } = down;
    await down.stop();
    const errors: string[] = [];
    const notifier = new AlertmanagerNotifier({
      urls: [down.baseUrl, am.baseUrl],
      instance: 'velro-test:3000',
      // Far longer than the test: what delivers the alert is the retry, not the periodic re-send.
      resendSeconds: 3_600,
      runbookUrl: 'README.md',
      onError: (error) => errors.push(error.message),
    });
    const { tracker, advance } = trackerWith(errorRule('test_errors_retried'), notifier);
    const failedBefore = await counted('failed');
    for (let i = 0; i < 4; i++) tracker.record('fast', 'GET /a', 1_000, 503);
    tracker.evaluateAlerts();
    advance(61 * SECOND);
    tracker.record('fast', 'GET /a', 1_000, 503);
    tracker.evaluateAlerts(); // fires: the post goes out to nobody

    await until('two failed posts (a first one and a retry)', 30_000, async () =>
      (await counted('failed')) >= failedBefore + 2 ? true : undefined,
    );
    expect(errors.length).toBeGreaterThanOrEqual(2);
    expect(notifier.undelivered()).toBe(1);
    // The Alertmanager that is up did not wait for the one that is down.
    expect(await listed(am, 'test_errors_retried')).toHaveLength(1);

    let back: Daemon | undefined;
    try {
      back = await startAlertmanager({ port, dir });
      const alerts = await until('the alert in Alertmanager after it came back', 60_000, async () => {
        const found = await listed(back as Daemon, 'test_errors_retried');
        return found.length > 0 ? found : undefined;
      });
      expect(alerts).toHaveLength(1);
      expect(alerts[0]?.labels.instance).toBe('velro-test:3000');
      await notifier.idle();
      expect(notifier.undelivered()).toBe(0);
    } finally {
      notifier.stop();
      await back?.close();
      await rm(dir, { recursive: true, force: true });
    }
  }, 150_000);

  describe('in a running app', () => {
    const fx = useTestDatabase();
    let t: TestApp | undefined;
    let second: Daemon;

    beforeAll(async () => {
      second = await startAlertmanager();
    }, 90_000);

    afterAll(async () => {
      await t?.close();
      await second?.close();
    });

    it('ALERTMANAGER_URL lists Alertmanagers; each receives what the tracker fires, labelled with this instance', async () => {
      expect(alertmanagerUrls(` ${am.baseUrl}/ , ,${second.baseUrl}`)).toEqual([
        `${am.baseUrl}/`,
        second.baseUrl,
      ]);
      // A quick rule: a few sign-ups make it fire at the tracker's next evaluation (every 5 s).
      const quick: AlertRule = {
        name: 'test_app_sign_ups_seen',
        metric: 'group:auth:count',
        comparison: 'gt',
        threshold: 2,
        window: '1m',
        minSamples: 3,
        forSeconds: 0,
        severity: 'warning',
        summary: 'Someone signs up',
      };
      t = await startTestApp({
        databaseUrl: fx.db.url,
        alertRules: [quick],
        env: {
          ALERTMANAGER_URL: `${am.baseUrl}/, ${second.baseUrl}`,
          ALERT_RUNBOOK_URL: 'https://velro.example/README.md',
        },
      });
      // Listening on a port the system chose: that port is in the instance label.
      await t.app.listen({ host: '127.0.0.1', port: 0 });
      const { port } = t.app.server.address() as AddressInfo;
      for (let i = 0; i < 3; i++) await signUp(t.app);

      for (const target of [am, second]) {
        const [alert, ...others] = await until(`the app's alert in ${target.baseUrl}`, 60_000, async () => {
          const found = await listed(target, 'test_app_sign_ups_seen');
          return found.length > 0 ? found : undefined;
        });
        expect(others).toEqual([]);
        expect(alert?.labels).toEqual({
          alertname: 'test_app_sign_ups_seen',
          severity: 'warning',
          instance: `${hostname()}:${port}`,
          service: 'velro',
        });
        expect(alert?.annotations.value).toBe('3');
        expect(alert?.annotations.threshold).toBe('> 2');
        expect(alert?.annotations.runbook_url).toBe('https://velro.example/README.md#test_app_sign_ups_seen');
      }
      // The counter the app serves at /metrics.
      const metrics = await t.app.inject({ method: 'GET', url: '/metrics' });
      expect(metrics.body).toMatch(/velro_alertmanager_notifications_total\{result="sent"\} [1-9]/);
    }, 120_000);
  });
});

describe.skipIf(!present)(
  'the example Alertmanager configuration (deploy/alertmanager/alertmanager.yml)',
  () => {
    const cwd = new URL('../deploy/alertmanager/', import.meta.url).pathname;
    const receiverOf = async (labels: Record<string, string>) => {
      const { stdout } = await runCommand(
        'amtool',
        [
          'config',
          'routes',
          'test',
          '--config.file=alertmanager.yml',
          ...Object.entries(labels).map(([k, v]) => `${k}=${v}`),
        ],
        { cwd },
      );
      return stdout.trim();
    };

    it('passes `amtool check-config`', async () => {
      const { stdout } = await runCommand('amtool', ['check-config', 'alertmanager.yml'], { cwd });
      expect(stdout).toContain('SUCCESS');
    });

    it('routes the alerts of every shipped rule by the severity they carry', async () => {
      const expected = { critical: 'on-call', warning: 'team-chat', info: 'nobody' };
      for (const rule of ALERT_RULES) {
        const receiver = await receiverOf({
          alertname: rule.name,
          severity: rule.severity,
          instance: 'velro-1:3000',
          service: 'velro',
        });
        expect({ rule: rule.name, receiver }).toEqual({ rule: rule.name, receiver: expected[rule.severity] });
      }
    });
  },
);

describe('runbook links', () => {
  it('every rule has its runbook entry in the README, the anchor its alerts link to', async () => {
    const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8');
    const runbook = readme.split('### Runbook')[1]?.split('\n## ')[0] ?? '';
    const entries = [...runbook.matchAll(/^#### `([a-z0-9_]+)`$/gm)].map((m) => m[1]);
    for (const rule of ALERT_RULES) expect(entries, rule.name).toContain(rule.name);
  });
});
