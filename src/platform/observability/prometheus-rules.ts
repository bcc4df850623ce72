import { ALERT_RULES, type AlertRule, ROUTE_GROUPS, samplesOf } from './alert-rules.js';
import type { Window } from './windowed-histogram.js';

/**
 * The alert rules as a Prometheus alerting-rules file, over the metric names Velro serves at
 * /metrics. Each alert is evaluated per scraped instance (`instance` label), like the in-process
 * tracker, and only where the window holds the rule's minimum sample count.
 */

const HTTP = 'velro_http_request_duration_seconds';

interface Expression {
  /** The judged value, per instance, in the unit of the threshold below. */
  value: string;
  /** The sample count over the window, per instance. */
  samples: string;
  /** The threshold in the value's unit (Prometheus uses seconds where the tracker uses ms). */
  threshold: number;
  /** How an annotation shows the value. */
  format: 'humanizeDuration' | 'humanizePercentage' | 'humanize';
  /** What the value is, for a person. */
  what: string;
}

function selector(matchers: string[]): string {
  return matchers.length === 0 ? '' : `{${matchers.join(', ')}}`;
}

function httpSelector(scope: string, name: string): string {
  if (scope === 'all') return '';
  if (scope === 'class') return selector([`route_class="${name}"`]);
  const group = ROUTE_GROUPS[name];
  if (!group) throw new Error(`no endpoint group "${name}"`);
  return selector([
    `route=~"${group.route}"`,
    ...(group.method === undefined ? [] : [`method="${group.method}"`]),
  ]);
}

const WINDOW_TEXT: Record<Window, string> = { '1m': '1 minute', '5m': '5 minutes', '1h': '1 hour' };

const QUANTILES: Record<string, number> = { p50_ms: 0.5, p95_ms: 0.95, p99_ms: 0.99 };

function expressionOf(rule: AlertRule): Expression {
  const w = rule.window;
  const [scope = '', name = '', field] = rule.metric.split(':');
  if (scope === 'group' || scope === 'class' || scope === 'all') {
    const key = scope === 'all' ? name : field;
    const sel = httpSelector(scope, name);
    const requests = `sum by (instance) (increase(${HTTP}_count${sel}[${w}]))`;
    const quantile = key ? QUANTILES[key] : undefined;
    if (quantile !== undefined)
      return {
        value: `histogram_quantile(${quantile}, sum by (instance, le) (rate(${HTTP}_bucket${sel}[${w}])))`,
        samples: requests,
        threshold: rule.threshold / 1000,
        format: 'humanizeDuration',
        what: `p${quantile * 100} latency of ${scope === 'all' ? 'all' : name.replaceAll('_', ' ')} requests over ${WINDOW_TEXT[w]}`,
      };
    if (key === 'error_rate') {
      const errors = selector([...sel.slice(1, -1).split(', ').filter(Boolean), 'status=~"5.."']);
      return {
        value: `sum by (instance) (rate(${HTTP}_count${errors}[${w}])) / sum by (instance) (rate(${HTTP}_count${sel}[${w}]))`,
        samples: requests,
        threshold: rule.threshold,
        format: 'humanizePercentage',
        what: `Share of server errors (5xx) over ${WINDOW_TEXT[w]}`,
      };
    }
  }
  if (rule.metric === 'cache:l1_hit_ratio') {
    // velro_cache_lookups is cumulative since start; increase() treats a restart as a reset.
    const lookups = `sum by (instance) (increase(velro_cache_lookups{layer="l1", result=~"hit|miss"}[${w}]))`;
    return {
      value: `sum by (instance) (increase(velro_cache_lookups{layer="l1", result="hit"}[${w}])) / ${lookups}`,
      samples: lookups,
      threshold: rule.threshold,
      format: 'humanizePercentage',
      what: `In-process (L1) cache hit ratio over ${WINDOW_TEXT[w]}`,
    };
  }
  const measurements = (metric: string) => `count_over_time(${metric}[${w}])`;
  switch (rule.metric) {
    case 'process:cpu_ratio':
      return {
        value: `rate(velro_process_cpu_seconds_total[${w}])`,
        samples: measurements('velro_process_cpu_seconds_total'),
        threshold: rule.threshold,
        format: 'humanizePercentage',
        what: `CPU use (share of one core) over ${WINDOW_TEXT[w]}`,
      };
    case 'process:memory_ratio':
      return {
        value: 'velro_process_resident_memory_bytes / velro_process_memory_limit_bytes',
        samples: measurements('velro_process_resident_memory_bytes'),
        threshold: rule.threshold,
        format: 'humanizePercentage',
        what: 'Resident memory, as a share of what the process may use,',
      };
    case 'process:event_loop_p99_ms':
      return {
        value: 'velro_nodejs_eventloop_lag_p99_seconds',
        samples: measurements('velro_nodejs_eventloop_lag_p99_seconds'),
        threshold: rule.threshold / 1000,
        format: 'humanizeDuration',
        what: 'Event loop delay (p99 since the previous scrape)',
      };
    case 'security:denials_per_subject_max':
      if (w === '1h') break;
      return {
        // Per-subject counts stay in the process (no subject label): it exports the worst one.
        value: `max by (instance) (velro_authz_denials_subject_max{window="${w}"})`,
        samples: `sum by (instance) (increase(velro_authz_denials_total[${w}]))`,
        threshold: rule.threshold,
        format: 'humanize',
        what: `The most 404 denials one subject had over ${WINDOW_TEXT[w]}`,
      };
    case 'db:pool_wait:p95_ms':
      return {
        value: `histogram_quantile(0.95, sum by (instance, le) (rate(velro_db_pool_wait_seconds_bucket[${w}])))`,
        samples: `sum by (instance) (increase(velro_db_pool_wait_seconds_count[${w}]))`,
        threshold: rule.threshold / 1000,
        format: 'humanizeDuration',
        what: `p95 wait for a database connection over ${WINDOW_TEXT[w]}`,
      };
    case 'breaker:open':
      return {
        value: 'sum by (instance) (velro_circuit_breaker_open)',
        samples: `max by (instance) (${measurements('velro_circuit_breaker_open')})`,
        threshold: rule.threshold,
        format: 'humanize',
        what: 'The number of open circuit breakers',
      };
  }
  throw new Error(`alert rule ${rule.name}: no Prometheus expression for metric ${rule.metric}`);
}

/** The PromQL of one rule: value beyond threshold, on instances with enough samples. */
export function promqlOf(rule: AlertRule): string {
  const e = expressionOf(rule);
  const op = rule.comparison === 'gt' ? '>' : '<';
  return `(${e.value}) ${op} ${e.threshold} and on (instance) (${e.samples}) >= ${rule.minSamples}`;
}

function duration(seconds: number): string {
  if (seconds === 0) return '0s';
  if (seconds % 3600 === 0) return `${seconds / 3600}h`;
  if (seconds % 60 === 0) return `${seconds / 60}m`;
  return `${seconds}s`;
}

/** A single-quoted YAML scalar: PromQL's double quotes stay as they are. */
const q = (text: string) => `'${text.replaceAll("'", "''")}'`;

export function thresholdText(rule: AlertRule): string {
  const op = rule.comparison === 'gt' ? '>' : '<';
  if (rule.metric.endsWith('_ms')) return `${op} ${rule.threshold} ms`;
  if (rule.metric.endsWith('ratio') || rule.metric.endsWith('error_rate'))
    return `${op} ${Math.round(rule.threshold * 1000) / 10} %`;
  return `${op} ${rule.threshold}`;
}

export function renderPrometheusRules(rules: AlertRule[] = ALERT_RULES): string {
  const lines = [
    '# Velro alerting rules for Prometheus. Generated from src/platform/observability/alert-rules.ts',
    '# by `npm run generate:alerts`; edit the definition there, not this file.',
    'groups:',
    '  - name: velro',
    '    rules:',
  ];
  for (const rule of rules) {
    const e = expressionOf(rule);
    const description =
      `${e.what} is {{ $value | ${e.format} }} ` +
      `(threshold ${thresholdText(rule)}; judged once ${rule.minSamples} ${samplesOf(rule)} are in the window).`;
    lines.push(
      `      - alert: ${rule.name}`,
      `        expr: ${q(promqlOf(rule))}`,
      `        for: ${duration(rule.forSeconds ?? 0)}`,
      '        labels:',
      `          severity: ${rule.severity}`,
      '        annotations:',
      `          summary: ${q(rule.summary ?? rule.name)}`,
      `          description: ${q(description)}`,
      `          threshold: ${q(thresholdText(rule))}`,
      `          runbook: ${q(`README, "Operating Velro: alert rules", ${rule.name}`)}`,
    );
  }
  return `${lines.join('\n')}\n`;
}

export { duration as forText };
