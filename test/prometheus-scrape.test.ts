import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { type LiveServer, startLiveServer } from './helpers/live.js';
import { type Daemon, getJson, haveBinary, startPrometheus, until } from './helpers/prometheus.js';

/**
 * A real Prometheus scrapes a live Velro with the example configuration shipped in
 * deploy/prometheus/prometheus.yml and evaluates the shipped rules (alerts.yml); the Grafana
 * dashboard (deploy/grafana/velro.json) queries only metrics the service serves.
 */

const PROMETHEUS_DIR = new URL('../deploy/prometheus/', import.meta.url);
const GRAFANA_FILE = new URL('../deploy/grafana/velro.json', import.meta.url);
const OPS_TOKEN = 'scrape-test-ops-token-0123456789abcdef';
/** Series Prometheus makes itself, not read from /metrics. */
const PROMETHEUS_OWN = new Set(['ALERTS', 'ALERTS_FOR_STATE']);

/**
 * The metric names a PromQL expression reads: identifiers left once strings, label matchers,
 * ranges, grouping clauses, functions and keywords are taken out.
 */
function metricNames(expr: string): string[] {
  const bare = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ');
  const keywords = new Set([
    'and',
    'or',
    'unless',
    'bool',
    'offset',
    'by',
    'without',
    'on',
    'ignoring',
    'inf',
    'nan',
  ]);
  const names = new Set<string>();
  for (const match of bare.matchAll(/(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?/g)) {
    const [, name, call] = match;
    if (!name || call || keywords.has(name.toLowerCase())) continue;
    names.add(name);
  }
  return [...names];
}

interface PromResponse<T> {
  status: string;
  data: T;
  error?: string;
}
interface Target {
  health: string;
  lastError: string;
  labels: Record<string, string>;
  scrapeUrl: string;
}
interface RuleGroup {
  name: string;
  rules: { name: string; health: string; lastError?: string; lastEvaluation: string; type: string }[];
}

const present = await haveBinary('prometheus', 'prometheus');

describe.skipIf(!present)('a real Prometheus scraping a live Velro', () => {
  let server: LiveServer;
  let prometheus: Daemon;
  let ruleNames: string[];
  let ruleExprs: string[];
  const startedAt = Date.now();

  const query = async (promql: string) => {
    const res = await fetch(`${prometheus.baseUrl}/api/v1/query?query=${encodeURIComponent(promql)}`);
    return (await res.json()) as PromResponse<{
      resultType: string;
      result: { metric: Record<string, string> }[];
    }>;
  };

  beforeAll(async () => {
    server = await startLiveServer({ OPS_TOKEN });
    // Some traffic, so the request histogram, the decision and denial counters and the ledger
    // have series: sign-ups, a failed sign-in, an authorization check of an id nobody owns.
    const post = (url: string, body: unknown, token?: string) =>
      fetch(`${server.baseUrl}/api/v1${url}`, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          ...(token ? { authorization: `Bearer ${token}` } : {}),
        },
        body: JSON.stringify(body),
      });
    let token = '';
    for (let i = 0; i < 3; i++) {
      const res = await post('/auth/register', {
        email: `scrape-${i}-${randomUUID()}@example.com`,
        password: 'correct horse battery',
      });
      expect(res.status).toBe(201);
      token = ((await res.json()) as { access_token: string }).access_token;
    }
    await (
      await post('/auth/login', { email: 'nobody@example.com', password: 'wrong password' })
    ).body?.cancel();
    const denied = await post(
      '/authz/check',
      { resource: { type: 'generation', id: randomUUID() }, permission: 'view' },
      token,
    );
    await denied.body?.cancel();

    const alerts = await readFile(new URL('alerts.yml', PROMETHEUS_DIR), 'utf8');
    const rules = parse(alerts) as { groups: { rules: { alert: string; expr: string }[] }[] };
    ruleNames = rules.groups.flatMap((g) => g.rules.map((r) => r.alert));
    ruleExprs = rules.groups.flatMap((g) => g.rules.map((r) => r.expr));

    // The shipped example, pointed at this server, with quick intervals and no Alertmanager.
    const config = parse(await readFile(new URL('prometheus.yml', PROMETHEUS_DIR), 'utf8'));
    config.global = { scrape_interval: '1s', evaluation_interval: '1s' };
    const job = config.scrape_configs[0];
    expect(job.authorization.credentials_file).toBeTruthy();
    job.authorization.credentials_file = 'velro-ops-token';
    job.static_configs = [{ targets: [new URL(server.baseUrl).host] }];
    delete config.alerting;
    prometheus = await startPrometheus({
      'prometheus.yml': stringify(config),
      'alerts.yml': alerts,
      'velro-ops-token': OPS_TOKEN,
    });
  }, 180_000);

  afterAll(async () => {
    await prometheus?.close();
    await server?.close();
  });

  it('/metrics is closed without the token, so the scrape needs the configured bearer token', async () => {
    const res = await fetch(`${server.baseUrl}/metrics`);
    await res.body?.cancel();
    expect(res.status).toBe(401);
  });

  it('the target is up', async () => {
    const target = await until('the Velro target to be up', 60_000, async () => {
      const body = await getJson<PromResponse<{ activeTargets: Target[] }>>(
        `${prometheus.baseUrl}/api/v1/targets`,
      );
      const found = body?.data.activeTargets.find((t) => t.labels.job === 'velro');
      return found?.health === 'up' ? found : undefined;
    });
    expect(target.lastError).toBe('');
    expect(target.scrapeUrl).toBe(`${server.baseUrl}/metrics`);
  }, 90_000);

  it('every metric the alert rules read has a series in Prometheus', async () => {
    const names = [...new Set(ruleExprs.flatMap(metricNames))];
    expect(names.length).toBeGreaterThan(5);
    for (const name of names) {
      const result = await until(`a series of ${name}`, 60_000, async () => {
        const body = await query(name);
        return body.data.result.length > 0 ? body.data.result : undefined;
      });
      expect(result[0]?.metric.job, name).toBe('velro');
    }
  }, 120_000);

  it('Prometheus lists every shipped rule and evaluates each without error', async () => {
    const rules = await until('every rule evaluated at least once', 60_000, async () => {
      const body = await getJson<PromResponse<{ groups: RuleGroup[] }>>(`${prometheus.baseUrl}/api/v1/rules`);
      const all = body?.data.groups.flatMap((g) => g.rules) ?? [];
      const evaluated = all.filter((r) => Date.parse(r.lastEvaluation) >= startedAt);
      return all.length === ruleNames.length && evaluated.length === all.length ? all : undefined;
    });
    expect(rules.map((r) => r.name).sort()).toEqual([...ruleNames].sort());
    for (const rule of rules) {
      expect(rule.type, rule.name).toBe('alerting');
      expect({ rule: rule.name, health: rule.health, error: rule.lastError ?? '' }).toEqual({
        rule: rule.name,
        health: 'ok',
        error: '',
      });
    }
  }, 90_000);

  describe('the Grafana dashboard (deploy/grafana/velro.json)', () => {
    interface Panel {
      type: string;
      title: string;
      targets?: { expr: string }[];
    }
    const panelsOf = async () => {
      const dashboard = JSON.parse(await readFile(GRAFANA_FILE, 'utf8')) as { panels: Panel[] };
      return dashboard.panels.filter((p) => p.type !== 'row');
    };
    /** Grafana's variables as Prometheus would receive them with "All" selected. */
    const asPrometheusGets = (expr: string) =>
      expr.replaceAll('$instance', '.*').replaceAll('$__rate_interval', '1m').replaceAll('$__interval', '1m');

    it('has the panels of /dashboard, each with a query', async () => {
      const panels = await panelsOf();
      const titles = panels.map((p) => p.title);
      for (const title of [
        'Throughput',
        'Requests',
        'p95, all routes',
        'Errors (5xx)',
        'L1 hit ratio',
        'L2 hit ratio',
        'Queue depth',
        'Cache hit ratio',
        'Alerts',
        'Latency per route class',
        'Database pools',
      ])
        expect(titles).toContain(title);
      for (const panel of panels) expect(panel.targets?.length ?? 0, panel.title).toBeGreaterThan(0);
    });

    it('every metric a panel queries is served at /metrics', async () => {
      const res = await fetch(`${server.baseUrl}/metrics`, {
        headers: { authorization: `Bearer ${OPS_TOKEN}` },
      });
      expect(res.status).toBe(200);
      const text = await res.text();
      const served = new Set(
        text
          .split('\n')
          .filter((line) => line && !line.startsWith('#'))
          .map((line) => /^[a-zA-Z_:][\w:]*/.exec(line)?.[0]),
      );
      const missing: string[] = [];
      let checked = 0;
      for (const panel of await panelsOf()) {
        for (const target of panel.targets ?? []) {
          for (const name of metricNames(target.expr)) {
            if (PROMETHEUS_OWN.has(name)) continue;
            checked += 1;
            if (!served.has(name)) missing.push(`${panel.title}: ${name}`);
          }
        }
      }
      expect(missing).toEqual([]);
      expect(checked).toBeGreaterThan(20);
    });

    it('every panel query is valid PromQL that the scraping Prometheus evaluates', async () => {
      for (const panel of await panelsOf()) {
        for (const target of panel.targets ?? []) {
          const body = await query(asPrometheusGets(target.expr));
          expect({ panel: panel.title, status: body.status, error: body.error }).toEqual({
            panel: panel.title,
            status: 'success',
            error: undefined,
          });
        }
      }
    });
  });
});

describe('reading metric names out of PromQL', () => {
  it('sees through functions, grouping clauses, label matchers and ranges', () => {
    expect(
      metricNames(
        'histogram_quantile(0.95, sum by (route_class, le) (rate(velro_a_bucket{route=~"x|y"}[5m]))) > 0.075 and on (instance) count_over_time(velro_b[5m]) >= 3 or vector(0) / ALERTS',
      ).sort(),
    ).toEqual(['ALERTS', 'velro_a_bucket', 'velro_b']);
  });
});

describe('the README shows the shipped example configuration', () => {
  it('its prometheus.yml block is deploy/prometheus/prometheus.yml', async () => {
    const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8');
    const shipped = await readFile(new URL('prometheus.yml', PROMETHEUS_DIR), 'utf8');
    const section = readme.split('### Wiring Prometheus')[1] ?? '';
    const block = /```yaml\n([\s\S]*?)```/.exec(section)?.[1];
    expect(block).toBe(shipped);
  });
});
