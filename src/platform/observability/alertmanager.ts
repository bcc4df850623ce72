import { Counter } from 'prom-client';
import { processRegistry } from './metrics.js';
import { thresholdText } from './prometheus-rules.js';
import type { AlertState } from './tracker.js';

/**
 * Delivery of the in-process tracker's alerts to Alertmanager (v2 API, `POST /api/v2/alerts`).
 * Routing to e-mail, chat or pagers is Alertmanager's job; this only makes sure it knows what fires.
 *
 * - Every Alertmanager in the list gets every alert (that is how its HA pairs expect clients).
 * - A firing alert keeps its `startsAt` and is re-sent every `resendSeconds`, each time with an
 *   `endsAt` four periods ahead (as Prometheus does: an alert nobody re-sends resolves by itself);
 *   a resolved one is sent once more with its `endsAt`, then forgotten. Alertmanager identifies an alert by its labels, so re-sending
 *   never makes a second one.
 * - A failed post is retried with backoff (1 s doubling, capped at the resend period) carrying the
 *   latest state of each alert; one post at a time per Alertmanager.
 * - Nothing here is awaited by a request: the tracker's evaluation timer calls `notify`, which
 *   only records the change and schedules a post.
 */

export const alertmanagerNotifications = new Counter({
  name: 'velro_alertmanager_notifications_total',
  help: 'Posts of alerts to Alertmanager, by result (sent, failed); one post per Alertmanager',
  labelNames: ['result'],
  registers: [processRegistry],
});

/** What Alertmanager's v2 API takes, one element of the posted array. */
export interface PostableAlert {
  labels: Record<string, string>;
  annotations: Record<string, string>;
  startsAt: string;
  endsAt?: string;
  generatorURL?: string;
}

export interface AlertmanagerOptions {
  /** Alertmanager base URLs (`http://alertmanager:9093`), each sent every alert. */
  urls: string[];
  /** The `instance` label: which Velro process raised the alert (read when an alert is posted). */
  instance: string | (() => string);
  /** More labels on every alert (`process` for one of several server processes on one port). */
  labels?: Record<string, string>;
  resendSeconds: number;
  /** Where the runbook is (the README); the rule's name is appended as its anchor. */
  runbookUrl: string;
  /** Per post. */
  timeoutMs?: number;
  onError?: (error: Error, url: string) => void;
  now?: () => number;
}

interface Tracked {
  state: AlertState;
  startsAt: string;
  endsAt: string | null;
  /** Last known value (kept after resolution). */
  value: number | null;
  /** The Alertmanagers that have not yet received this alert's current state (in flight included). */
  owed: Set<string>;
  /** Bumped on every change (resolution, re-send): a post answers only for the version it carried. */
  version: number;
}

interface Target {
  url: string;
  posting: boolean;
  failures: number;
  retry: NodeJS.Timeout | null;
}

/** Labels and annotations of one alert, as delivered. */
export function toPostable(
  tracked: Pick<Tracked, 'state' | 'startsAt' | 'endsAt' | 'value'>,
  instance: string,
  runbookUrl: string,
  /** For a firing alert: when Alertmanager should consider it resolved if it hears no more. */
  expiresAt?: string,
  labels: Record<string, string> = {},
): PostableAlert {
  const { rule } = tracked.state;
  const alert: PostableAlert = {
    labels: { ...labels, alertname: rule.name, severity: rule.severity, instance, service: 'velro' },
    annotations: {
      summary: rule.summary ?? rule.name,
      value: tracked.value === null ? 'none' : String(Math.round(tracked.value * 10_000) / 10_000),
      threshold: thresholdText(rule),
      runbook_url: `${runbookUrl}#${rule.name}`,
    },
    startsAt: tracked.startsAt,
  };
  if (tracked.endsAt) alert.endsAt = tracked.endsAt;
  else if (expiresAt) alert.endsAt = expiresAt;
  return alert;
}

export class AlertmanagerNotifier {
  private readonly alerts = new Map<string, Tracked>();
  private readonly targets: Target[];
  private resendTimer: NodeJS.Timeout | null = null;
  private stopped = false;
  private readonly idleWaiters: (() => void)[] = [];

  constructor(private readonly options: AlertmanagerOptions) {
    this.targets = options.urls.map((url) => ({
      url: url.replace(/\/+$/, ''),
      posting: false,
      failures: 0,
      retry: null,
    }));
  }

  /** The tracker's transition callback: an alert began firing or resolved. */
  notify(state: AlertState): void {
    if (this.stopped) return;
    const name = state.rule.name;
    const everyone = new Set(this.targets.map((t) => t.url));
    if (state.state === 'firing') {
      this.alerts.set(name, {
        state,
        startsAt: state.last_fired_at ?? new Date(this.now()).toISOString(),
        endsAt: null,
        value: state.value,
        owed: everyone,
        version: 0,
      });
    } else {
      const tracked = this.alerts.get(name);
      // Resolved before it was ever recorded as firing here: nothing to tell.
      if (!tracked || tracked.endsAt) return;
      tracked.endsAt = state.last_resolved_at ?? new Date(this.now()).toISOString();
      tracked.value = state.value;
      tracked.owed = everyone;
      tracked.version += 1;
    }
    this.flushAll();
  }

  start(): void {
    if (this.resendTimer || this.stopped) return;
    this.resendTimer = setInterval(() => this.resend(), this.options.resendSeconds * 1000);
    this.resendTimer.unref();
  }

  /** Re-sends every firing alert to every Alertmanager (what the timer does). */
  resend(): void {
    for (const tracked of this.alerts.values()) {
      if (tracked.endsAt) continue;
      if (tracked.state.state === 'firing') tracked.value = tracked.state.value;
      tracked.version += 1;
      for (const target of this.targets) tracked.owed.add(target.url);
    }
    this.flushAll();
  }

  /** Alerts not yet delivered to every Alertmanager, posts in flight included (firing ones are owed again at every re-send). */
  undelivered(): number {
    let n = 0;
    for (const tracked of this.alerts.values()) if (tracked.owed.size > 0) n++;
    return n;
  }

  /** Resolves once nothing is owed and no post is in flight (tests; shutdown). */
  idle(): Promise<void> {
    if (this.isIdle()) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  stop(): void {
    this.stopped = true;
    if (this.resendTimer) clearInterval(this.resendTimer);
    this.resendTimer = null;
    for (const target of this.targets) {
      if (target.retry) clearTimeout(target.retry);
      target.retry = null;
    }
    this.wakeIdle(true);
  }

  private instance(): string {
    const { instance } = this.options;
    return typeof instance === 'string' ? instance : instance();
  }

  private now(): number {
    return (this.options.now ?? Date.now)();
  }

  private isIdle(): boolean {
    return this.undelivered() === 0 && this.targets.every((t) => !t.posting);
  }

  private wakeIdle(force = false): void {
    if (!force && !this.isIdle()) return;
    for (const resolve of this.idleWaiters.splice(0)) resolve();
  }

  private flushAll(): void {
    for (const target of this.targets) this.flush(target);
  }

  private flush(target: Target): void {
    if (this.stopped || target.posting || target.retry) return;
    const batch = [...this.alerts.values()].filter((a) => a.owed.has(target.url));
    if (batch.length === 0) {
      this.wakeIdle();
      return;
    }
    // What is posted is the state at this moment; a change while the post is in flight (a new
    // version) stays owed after it.
    const versions = batch.map((tracked) => tracked.version);
    // As Prometheus does: a firing alert is valid for four re-send periods, so the alerts of a
    // process that stopped (or lost its way to Alertmanager) resolve by themselves.
    const expiresAt = new Date(Date.now() + 4 * this.options.resendSeconds * 1000).toISOString();
    const body = JSON.stringify(
      batch.map((tracked) =>
        toPostable(tracked, this.instance(), this.options.runbookUrl, expiresAt, this.options.labels),
      ),
    );
    target.posting = true;
    this.post(target.url, body).then(
      () => {
        target.posting = false;
        target.failures = 0;
        alertmanagerNotifications.inc({ result: 'sent' });
        for (const [k, tracked] of batch.entries()) {
          if (tracked.version === versions[k]) tracked.owed.delete(target.url);
          // A resolution delivered everywhere is done with.
          if (
            tracked.endsAt &&
            tracked.owed.size === 0 &&
            this.alerts.get(tracked.state.rule.name) === tracked
          )
            this.alerts.delete(tracked.state.rule.name);
        }
        this.flush(target);
      },
      (error: Error) => {
        target.posting = false;
        target.failures += 1;
        alertmanagerNotifications.inc({ result: 'failed' });
        this.options.onError?.(error, target.url);
        // Still owed: the retry carries each alert's latest state.
        if (this.stopped) return this.wakeIdle(true);
        const delay = Math.min(1_000 * 2 ** (target.failures - 1), this.options.resendSeconds * 1000);
        target.retry = setTimeout(() => {
          target.retry = null;
          this.flush(target);
        }, delay);
        target.retry.unref();
      },
    );
  }

  private async post(url: string, body: string): Promise<void> {
    const res = await fetch(`${url}/api/v2/alerts`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body,
      signal: AbortSignal.timeout(this.options.timeoutMs ?? 5_000),
    });
    if (!res.ok) {
      const text = await res.text().catch(() => '');
      throw new Error(`Alertmanager answered ${res.status}: ${text.slice(0, 200)}`);
    }
    await res.body?.cancel().catch(() => {});
  }
}

/** `ALERTMANAGER_URL` as a list: comma-separated, blanks ignored. */
export function alertmanagerUrls(setting: string | undefined): string[] {
  return (setting ?? '')
    .split(',')
    .map((u) => u.trim())
    .filter(Boolean);
}
