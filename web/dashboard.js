// Velro live dashboard: polls GET /api/v1/performance/dashboard every 2 s, keeps the last 10 minutes
// of samples in memory and draws them with uPlot. No build step, no requests to any other host.
(() => {
  const ENDPOINT = '/api/v1/performance/dashboard';
  const POLL_MS = 2_000;
  const KEEP_S = 600;
  const RATIO_SPAN_S = 60;
  /** Route classes of the spec, in the order they are drawn; any other class is appended. */
  const CLASSES = ['ultra_fast', 'critical_auth', 'fast', 'standard', 'heavy'];
  const COLORS = {
    throughput: '#1c7ed6',
    l1: '#1c7ed6',
    l2: '#ae3ec9',
    p50: '#2f9e44',
    p95: '#f08c00',
    p99: '#e03131',
    queue: '#0c8599',
    ok: '#2f9e44',
    bad: '#e03131',
    warn: '#f08c00',
    created: '#1c7ed6',
    credits: '#7048e8',
    muted: '#868e96',
  };
  /** Rows of the slowest-endpoints table. */
  const TOP_ENDPOINTS = 8;
  const AXIS = {
    stroke: '#5c6370',
    font: '11px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif',
    grid: { stroke: '#eceef1', width: 1 },
    ticks: { stroke: '#eceef1', width: 1, size: 4 },
  };

  const uPlot = globalThis.uPlot;
  const token = new URLSearchParams(location.hash.slice(1)).get('token');
  const headers = token ? { authorization: `Bearer ${token}` } : {};

  const $ = (id) => document.getElementById(id);
  const main = $('dashboard');
  /** @type {{t: number, d: object}[]} */
  const samples = [];
  let polls = 0;

  // ---------------------------------------------------------------------------------------------
  // Formatting

  const fmtMs = (v) => {
    if (v === null || v === undefined || Number.isNaN(v)) return '–';
    if (v < 10) return v.toFixed(2);
    if (v < 100) return v.toFixed(1);
    return Math.round(v).toLocaleString('en-US');
  };
  const fmtRate = (v) => {
    if (v === null || v === undefined) return '–';
    if (v === 0) return '0';
    if (v < 1) return v.toFixed(2);
    if (v < 100) return v.toFixed(1);
    return Math.round(v).toLocaleString('en-US');
  };
  /** Axis ticks: as few digits as the step needs. */
  const fmtTick = (v) => (Math.abs(v) >= 10 ? String(Math.round(v)) : String(Number(v.toFixed(2))));
  const fmtPct = (v, digits = 1) => (v === null || v === undefined ? '–' : `${(v * 100).toFixed(digits)} %`);
  const fmtInt = (v) => (v === null || v === undefined ? '–' : Math.round(v).toLocaleString('en-US'));
  const fmtTime = (iso) => (iso ? new Date(iso).toLocaleTimeString('en-GB', { hour12: false }) : '–');
  const fmtValue = (metric, v) => {
    if (v === null || v === undefined) return '–';
    if (metric.endsWith('_ms')) return `${fmtMs(v)} ms`;
    if (metric.includes('ratio') || metric.includes('error_rate')) return fmtPct(v, 2);
    return fmtRate(v);
  };
  const classLabel = (name) => name.replace(/_/g, ' ');

  /** Creates an element with a class and text, without ever parsing HTML. */
  const el = (tag, className, text) => {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  };

  // ---------------------------------------------------------------------------------------------
  // Charts

  const charts = [];

  function sizeOf(container) {
    return { width: Math.max(120, Math.floor(container.clientWidth)), height: container.clientHeight || 150 };
  }

  function makeChart(container, series, yOptions = {}) {
    const { width, height } = sizeOf(container);
    const options = {
      width,
      height,
      legend: { show: false },
      cursor: { drag: { x: false, y: false }, points: { size: 5 } },
      padding: yOptions.padding ?? [8, 8, 0, 0],
      scales: { x: { time: true }, y: { range: yOptions.range } },
      axes: [
        { ...AXIS, size: 26, space: 60 },
        { ...AXIS, size: yOptions.axisSize ?? 42, space: 24, values: yOptions.values },
      ],
      series: [
        {},
        ...series.map((s) => ({
          label: s.label,
          stroke: s.color,
          width: s.width ?? 1.5,
          fill: s.fill,
          spanGaps: false,
          points: s.points ?? { show: false },
        })),
      ],
    };
    const empty = [[], ...series.map(() => [])];
    const chart = new uPlot(options, empty, container);
    charts.push({ chart, container });
    return chart;
  }

  const zeroTo = (headroom, floor) => (_u, _min, max) => [0, Math.max(floor, (max ?? 0) * headroom)];

  const throughputChart = makeChart(
    $('chart-throughput'),
    [{ label: 'req/s', color: COLORS.throughput, width: 2, fill: 'rgba(28, 126, 214, 0.10)' }],
    { range: zeroTo(1.2, 1), values: (_u, ticks) => ticks.map(fmtTick) },
  );

  const cacheChart = makeChart(
    $('chart-cache'),
    [
      { label: 'L1', color: COLORS.l1, width: 2 },
      { label: 'L2', color: COLORS.l2, width: 2 },
    ],
    {
      range: (_u, min) => [
        min === null || min === undefined ? 0 : Math.floor(Math.min(min, 0.9) * 10) / 10,
        1,
      ],
      values: (_u, ticks) => ticks.map((v) => `${Math.round(v * 100)}%`),
    },
  );

  const queueChart = makeChart(
    $('chart-queue'),
    [{ label: 'jobs', color: COLORS.queue, width: 2, fill: 'rgba(12, 133, 153, 0.10)' }],
    {
      range: zeroTo(1.25, 4),
      values: (_u, ticks) => ticks.map((v) => (Number.isInteger(v) ? String(v) : '')),
    },
  );

  // Activity per minute over the last hour (x: the start of each minute). Counts, so integer ticks.
  // A dot on every minute that had events: a single busy minute (the first one this process saw,
  // or an isolated spike) is visible even where there is no line to draw.
  const eventPoints = {
    show: true,
    size: 6,
    space: 0,
    filter: (u, i) => u.data[i].flatMap((v, index) => (typeof v === 'number' && v > 0 ? [index] : [])),
  };
  const countTicks = (_u, ticks) => ticks.map((v) => (Number.isInteger(v) ? fmtInt(v) : ''));
  const activityChart = (id, series) =>
    makeChart(
      $(id),
      series.map((s) => ({ ...s, width: s.width ?? 2, points: eventPoints })),
      { range: zeroTo(1.2, 4), values: countTicks, axisSize: 36, padding: [8, 18, 0, 0] },
    );
  const signinsChart = activityChart('chart-signins', [
    { label: 'ok', color: COLORS.ok },
    { label: 'failed', color: COLORS.bad },
  ]);
  const generationsChart = activityChart('chart-generations', [
    { label: 'created', color: COLORS.created },
    { label: 'completed', color: COLORS.ok },
    { label: 'failed', color: COLORS.bad },
    { label: 'cancelled', color: COLORS.muted, width: 1.5 },
  ]);
  const creditsChart = activityChart('chart-credits', [
    { label: 'spent', color: COLORS.credits, fill: 'rgba(112, 72, 232, 0.10)' },
    { label: 'refunded', color: COLORS.muted, width: 1.5 },
  ]);
  const denialsChart = activityChart('chart-denials', [
    { label: 'hidden (404)', color: COLORS.bad },
    { label: 'forbidden (403)', color: COLORS.warn },
  ]);
  const httpErrorsChart = activityChart('chart-http-errors', [
    { label: '4xx', color: COLORS.warn },
    { label: '5xx', color: COLORS.bad },
  ]);

  /** One small chart per route class, created when the class is first known. */
  const latency = new Map();

  function latencyPanel(name) {
    let panel = latency.get(name);
    if (panel) return panel;
    const card = el('div', 'mini');
    card.dataset.class = name;
    card.dataset.testid = `latency-${name}`;
    const head = el('div', 'mini-head');
    head.append(el('span', 'mini-name', classLabel(name)), el('span', 'mini-rate', '–'));
    const figures = el('div', 'mini-figures');
    const p50 = el('span', 'fig fig-p50', 'p50 –');
    const p95 = el('span', 'fig fig-p95', 'p95 –');
    const p99 = el('span', 'fig fig-p99', 'p99 –');
    figures.append(p50, p95, p99);
    const chartBox = el('div', 'chart chart-mini');
    chartBox.id = `chart-latency-${name}`;
    card.append(head, figures, chartBox);
    $('latency-grid').append(card);
    const chart = makeChart(
      chartBox,
      [
        { label: 'p50', color: COLORS.p50 },
        { label: 'p95', color: COLORS.p95 },
        { label: 'p99', color: COLORS.p99 },
      ],
      { range: zeroTo(1.15, 1), values: (_u, ticks) => ticks.map(fmtTick), axisSize: 36 },
    );
    panel = { card, chart, rate: head.lastChild, p50, p95, p99 };
    latency.set(name, panel);
    return panel;
  }

  for (const name of CLASSES) latencyPanel(name);

  let resizeQueued = false;
  const resize = () => {
    if (resizeQueued) return;
    resizeQueued = true;
    requestAnimationFrame(() => {
      resizeQueued = false;
      for (const { chart, container } of charts) chart.setSize(sizeOf(container));
    });
  };
  if ('ResizeObserver' in globalThis) {
    const observer = new ResizeObserver(resize);
    for (const { container } of charts) observer.observe(container);
  }
  addEventListener('resize', resize);

  // ---------------------------------------------------------------------------------------------
  // Derived series

  /** Hit ratio of one layer over the last minute of samples, from its cumulative counters. */
  function windowRatio(index, layer) {
    const current = samples[index];
    const counters = current.d.cache?.[layer];
    if (!counters || typeof counters.hits !== 'number') return null;
    if (layer === 'l2' && counters.configured === false) return null;
    let base = null;
    for (let i = 0; i < index; i++) {
      if (samples[i].t >= current.t - RATIO_SPAN_S) {
        base = samples[i].d.cache?.[layer];
        break;
      }
    }
    if (!base) {
      // First minute of this page: fall back to the server's own window (L1) or the total.
      if (layer === 'l1' && typeof current.d.cache.l1_hit_ratio_1m === 'number')
        return current.d.cache.l1_hit_ratio_1m;
      return typeof counters.hit_ratio === 'number' ? counters.hit_ratio : null;
    }
    const hits = counters.hits - base.hits;
    const lookups = hits + (counters.misses - base.misses);
    if (lookups <= 0 || hits < 0) return null;
    return hits / lookups;
  }

  const classStats = (sample, name) => {
    const s = sample.d.requests?.by_class?.[name];
    return s && s.count > 0 ? s : null;
  };

  // ---------------------------------------------------------------------------------------------
  // Rendering

  /** Sets a chart's data and notes on its container how many values it holds (for tests, tooling). */
  function draw(chart, data) {
    chart.setData(data);
    let values = 0;
    for (let i = 1; i < data.length; i++)
      for (const v of data[i]) if (v !== null && v !== undefined) values += 1;
    chart.root.parentElement.dataset.values = String(values);
  }

  /** Sets a per-minute chart's data and notes the sum of every series on its container. */
  function drawMinutes(chart, xs, series) {
    draw(chart, [xs, ...series]);
    chart.root.parentElement.dataset.total = String(series.reduce((a, values) => a + sum(values), 0));
  }

  const sum = (values) => (values ?? []).reduce((a, v) => a + (typeof v === 'number' ? v : 0), 0);

  function render() {
    const last = samples[samples.length - 1];
    if (!last) return;
    const d = last.d;
    const xs = samples.map((s) => s.t);

    // Throughput, queue
    draw(throughputChart, [xs, samples.map((s) => s.d.requests?.overall?.throughput ?? null)]);
    draw(queueChart, [
      xs,
      samples.map((s) => (typeof s.d.queue_depth === 'number' ? s.d.queue_depth : null)),
    ]);

    // Cache
    for (let i = 0; i < samples.length; i++) {
      if (samples[i].ratios === undefined) {
        samples[i].ratios = { l1: windowRatio(i, 'l1'), l2: windowRatio(i, 'l2') };
      }
    }
    draw(cacheChart, [xs, samples.map((s) => s.ratios.l1), samples.map((s) => s.ratios.l2)]);

    // Latency per class
    for (const name of Object.keys(d.requests?.by_class ?? {})) latencyPanel(name);
    for (const [name, panel] of latency) {
      const pick = (k) => samples.map((s) => classStats(s, name)?.[k] ?? null);
      draw(panel.chart, [xs, pick('p50_ms'), pick('p95_ms'), pick('p99_ms')]);
      const now = classStats(last, name);
      panel.card.classList.toggle('idle', !now);
      panel.rate.textContent = now
        ? `${fmtRate(now.throughput)} req/s · ${fmtInt(now.count)} req`
        : 'no requests';
      panel.p50.textContent = `p50 ${now ? fmtMs(now.p50_ms) : '–'}`;
      panel.p95.textContent = `p95 ${now ? fmtMs(now.p95_ms) : '–'}`;
      panel.p99.textContent = `p99 ${now ? fmtMs(now.p99_ms) : '–'}`;
    }

    renderKpis(d, last);
    renderActivity(d.activity);
    renderEndpoints(d.requests?.by_endpoint ?? {});
    renderPools(d.pools ?? {}, d.db?.pools ?? {});
    renderAlerts(d.alerts ?? []);
    renderStatus(d.health);

    $('updated').textContent = `updated ${fmtTime(d.generated_at)}`;
    $('points').textContent = `${samples.length} sample${samples.length === 1 ? '' : 's'}`;
    main.dataset.points = String(samples.length);
    main.dataset.polls = String(polls);
  }

  function renderKpis(d, last) {
    const overall = d.requests?.overall;
    $('kpi-throughput').textContent = fmtRate(overall?.throughput ?? null);
    $('kpi-requests').textContent = fmtInt(overall?.count ?? null);
    $('kpi-p95').textContent = overall && overall.count > 0 ? fmtMs(overall.p95_ms) : '–';
    const errors = $('kpi-errors');
    errors.textContent = overall && overall.count > 0 ? fmtPct(overall.error_rate, 2) : '–';
    errors.classList.toggle('bad', (overall?.error_rate ?? 0) > 0.001);

    const cache = d.cache ?? {};
    const l1 = cache.l1;
    $('kpi-l1').textContent = cache.enabled === false ? 'off' : fmtPct(last.ratios.l1);
    const l1Detail = $('kpi-l1-detail');
    l1Detail.textContent = l1 ? `1 min · total ${fmtPct(l1.hit_ratio)}` : 'in-process';
    l1Detail.title = l1
      ? `${fmtInt(l1.hits + l1.misses)} lookups since start, ${fmtInt(l1.evictions)} evictions`
      : '';
    const l2 = cache.l2;
    if (!l2 || l2.configured === false) {
      $('kpi-l2').textContent = 'n/a';
      $('kpi-l2-detail').textContent = 'Redis not configured';
      $('legend-l2').textContent = 'L2 (off)';
    } else {
      $('legend-l2').textContent = 'L2';
      $('kpi-l2').textContent = fmtPct(last.ratios.l2);
      $('kpi-l2-detail').textContent =
        `${l2.available === false ? 'unavailable · ' : ''}${fmtInt(l2.hits + l2.misses)} lookups${l2.errors ? ` · ${fmtInt(l2.errors)} errors` : ''}`;
    }
    $('kpi-queue').textContent = typeof d.queue_depth === 'number' ? fmtInt(d.queue_depth) : '–';
  }

  function renderActivity(a) {
    if (!a) return;
    const xs = (a.minute_starts ?? []).map((iso) => Date.parse(iso) / 1000);
    const fleet = a.fleet ?? {};
    const instance = a.instance ?? {};
    const signIns = fleet.sign_ins ?? {};
    const gens = fleet.generations ?? {};
    const credits = fleet.credits ?? {};
    const denials = instance.denials ?? {};
    const answers = instance.responses ?? {};
    drawMinutes(signinsChart, xs, [signIns.ok, signIns.failed]);
    drawMinutes(generationsChart, xs, [gens.created, gens.completed, gens.failed, gens.cancelled]);
    drawMinutes(creditsChart, xs, [credits.spent, credits.refunded]);
    drawMinutes(denialsChart, xs, [denials.hidden, denials.forbidden]);
    drawMinutes(httpErrorsChart, xs, [answers.client_errors, answers.server_errors]);

    const stale = fleet.error ? ' · stale: the database did not answer' : '';
    $('fig-signins').textContent =
      `${fmtInt(sum(signIns.ok))} ok · ${fmtInt(sum(signIns.failed))} failed in the last hour${stale}`;
    $('fig-generations').textContent =
      `${fmtInt(sum(gens.created))} created · ${fmtInt(sum(gens.completed))} completed · ` +
      `${fmtInt(sum(gens.failed))} failed · ${fmtInt(sum(gens.cancelled))} cancelled${stale}`;
    $('fig-credits').textContent =
      `${fmtInt(sum(credits.spent))} spent · ${fmtInt(sum(credits.refunded))} refunded in the last hour${stale}`;
    const since = instance.since ? ` since ${fmtTime(instance.since)}` : '';
    const firstMinute = a.minute_starts?.[0];
    const span = instance.since && firstMinute && instance.since > firstMinute ? since : ' in the last hour';
    $('fig-denials').textContent =
      `${fmtInt(sum(denials.hidden))} hidden · ${fmtInt(sum(denials.forbidden))} forbidden${span}`;
    const total = sum(answers.total);
    const share = (n) => (total > 0 ? fmtPct(n / total, 2) : '–');
    $('fig-http-errors').textContent =
      `4xx ${share(sum(answers.client_errors))} · 5xx ${share(sum(answers.server_errors))} of ` +
      `${fmtInt(total)} answers${span}`;
    $('fig-http-errors').classList.toggle('bad', sum(answers.server_errors) > 0);
  }

  function renderEndpoints(byEndpoint) {
    const top = Object.entries(byEndpoint)
      .filter(([, s]) => s && s.count > 0)
      .sort((a, b) => b[1].p95_ms - a[1].p95_ms)
      .slice(0, TOP_ENDPOINTS);
    const rows = top.map(([name, s]) => {
      const tr = el('tr');
      tr.dataset.endpoint = name;
      const cell = el('td', 'endpoint-name', name);
      cell.title = name;
      tr.append(
        cell,
        el('td', 'num', fmtInt(s.count)),
        el('td', 'num', fmtMs(s.p95_ms)),
        el('td', 'num', fmtMs(s.p99_ms)),
        el('td', s.errors > 0 ? 'num bad' : 'num', fmtInt(s.errors)),
      );
      return tr;
    });
    if (rows.length === 0) {
      const tr = el('tr');
      const td = el('td', 'muted', 'no requests in the last minute');
      td.colSpan = 5;
      tr.append(td);
      rows.push(tr);
    }
    $('endpoints').tBodies[0].replaceChildren(...rows);
  }

  function renderPools(pools, health) {
    const body = $('pools').tBodies[0];
    const rows = [];
    // Bars share one scale (the largest pool), so pool sizes compare at a glance.
    const scale = Math.max(1, ...Object.values(pools).map((p) => p.total));
    for (const [name, p] of Object.entries(pools)) {
      const inUse = Math.max(0, p.total - p.idle);
      const tr = el('tr');
      tr.dataset.pool = name;
      const bar = el('div', 'bar');
      const used = el('span', 'bar-used');
      used.style.width = `${(inUse / scale) * 100}%`;
      const idle = el('span', 'bar-idle');
      idle.style.width = `${(p.idle / scale) * 100}%`;
      bar.append(used, idle);
      if (p.waiting > 0) bar.append(el('span', 'bar-waiting', `+${p.waiting} waiting`));
      bar.title = `${inUse} in use, ${p.idle} idle, ${p.waiting} waiting`;
      const barCell = el('td', 'bar-col');
      barCell.append(bar);
      tr.append(
        el('th', 'pool-name', name.replace(/_/g, ' ')),
        el('td', 'num', fmtInt(p.total)),
        el('td', 'num', fmtInt(inUse)),
        el('td', 'num', fmtInt(p.idle)),
        el('td', p.waiting > 0 ? 'num bad' : 'num', fmtInt(p.waiting)),
        waitCell(health[name]),
        errorsCell(health[name]),
        barCell,
      );
      rows.push(tr);
    }
    if (rows.length === 0) {
      const tr = el('tr');
      const td = el('td', 'muted', 'no pools reported');
      td.colSpan = 8;
      tr.append(td);
      rows.push(tr);
    }
    body.replaceChildren(...rows);
  }

  function waitCell(h) {
    const td = el('td', 'num pool-wait', h && h.wait_p95_ms !== null ? `${fmtMs(h.wait_p95_ms)} ms` : '–');
    if (h) td.title = `${fmtInt(h.waits_1m)} connections handed out in the last minute`;
    return td;
  }

  function errorsCell(h) {
    if (!h) return el('td', 'num pool-errors', '–');
    const recent = h.errors_1m.acquire + h.errors_1m.query;
    const total = h.errors_total.acquire + h.errors_total.query;
    const td = el(
      'td',
      recent > 0 ? 'num pool-errors bad' : 'num pool-errors',
      `${fmtInt(recent)} (${fmtInt(total)})`,
    );
    td.title = `last minute: ${h.errors_1m.query} failed statements, ${h.errors_1m.acquire} acquisitions failed; since start: ${h.errors_total.query} and ${h.errors_total.acquire}`;
    return td;
  }

  const SEVERITY_ORDER = { critical: 0, warning: 1 };

  function renderAlerts(alerts) {
    const list = $('alerts');
    const firing = alerts
      .filter((a) => a.state === 'firing')
      .sort((a, b) => (SEVERITY_ORDER[a.rule.severity] ?? 2) - (SEVERITY_ORDER[b.rule.severity] ?? 2));
    const items = firing.map((a) => {
      const li = el('li', `alert alert-${a.rule.severity}`);
      li.dataset.alert = a.rule.name;
      li.dataset.severity = a.rule.severity;
      const cmp = a.rule.comparison === 'gt' ? '>' : '<';
      const top = el('div', 'alert-top');
      top.append(
        el('span', `sev sev-${a.rule.severity}`, a.rule.severity),
        el('b', 'alert-name', a.rule.name),
        el('span', 'alert-since', `since ${fmtTime(a.since)}`),
      );
      const detail = el(
        'div',
        'alert-detail',
        `${fmtValue(a.rule.metric, a.value)} ${cmp} ${fmtValue(a.rule.metric, a.rule.threshold)} · ${a.rule.metric}, ${a.rule.window}`,
      );
      li.title = `${a.rule.metric} over ${a.rule.window} is ${fmtValue(a.rule.metric, a.value)}, threshold ${cmp} ${fmtValue(a.rule.metric, a.rule.threshold)}; firing since ${a.since}`;
      li.append(top, detail);
      return li;
    });
    if (items.length === 0) items.push(el('li', 'alerts-empty', 'No alerts firing'));
    list.replaceChildren(...items);
    list.dataset.firing = String(firing.length);

    const counts = { firing: 0, ok: 0, insufficient_data: 0 };
    for (const a of alerts) counts[a.state] = (counts[a.state] ?? 0) + 1;
    $('alerts-count').textContent = firing.length === 0 ? 'none firing' : `${firing.length} firing`;
    $('rules-summary').textContent =
      `${alerts.length} rules: ${counts.firing} firing, ${counts.ok} ok, ${counts.insufficient_data} waiting for data`;
    const rows = alerts.map((a) => {
      const tr = el('tr', `rule rule-${a.state}`);
      tr.append(
        el('td', 'rule-name', a.rule.name),
        el('td', 'rule-state', a.state === 'insufficient_data' ? 'no data' : a.state),
        el('td', 'num', fmtValue(a.rule.metric, a.value)),
        el(
          'td',
          'muted',
          `${a.rule.comparison === 'gt' ? '>' : '<'} ${fmtValue(a.rule.metric, a.rule.threshold)}`,
        ),
      );
      return tr;
    });
    $('rules').tBodies[0].replaceChildren(...rows);
  }

  function renderStatus(health) {
    const badge = $('status-badge');
    const known = ['healthy', 'degraded', 'critical'].includes(health);
    badge.textContent = known ? health : 'unknown';
    badge.className = `badge badge-${known ? health : 'unknown'}`;
    badge.dataset.status = known ? health : 'unknown';
  }

  // ---------------------------------------------------------------------------------------------
  // Polling

  function showError(message) {
    const banner = $('poll-error');
    if (message) {
      banner.textContent = message;
      banner.hidden = false;
      const badge = $('status-badge');
      badge.textContent = 'no data';
      badge.className = 'badge badge-unknown';
      badge.dataset.status = 'unknown';
    } else if (!banner.hidden) {
      banner.hidden = true;
      banner.textContent = '';
    }
  }

  async function poll() {
    try {
      const res = await fetch(ENDPOINT, { headers, cache: 'no-store', credentials: 'same-origin' });
      if (res.status === 401) {
        showError(
          token
            ? 'The operations token in the address (#token=…) was refused.'
            : 'This server needs its operations token: open the dashboard as /dashboard#token=<OPS_TOKEN>.',
        );
        return;
      }
      if (!res.ok) {
        showError(`${ENDPOINT} answered ${res.status}; retrying every ${POLL_MS / 1000} s.`);
        return;
      }
      const d = await res.json();
      polls += 1;
      const t = Date.parse(d.generated_at) / 1000 || Date.now() / 1000;
      samples.push({ t, d });
      while (samples.length > 0 && samples[0].t < t - KEEP_S) samples.shift();
      showError(null);
      render();
    } catch (error) {
      showError(
        `Cannot reach ${ENDPOINT} (${error instanceof Error ? error.message : 'network error'}); retrying.`,
      );
    }
  }

  let timer = null;
  let inFlight = false;
  async function loop() {
    if (inFlight) return;
    clearTimeout(timer);
    inFlight = true;
    const started = Date.now();
    try {
      await poll();
    } finally {
      inFlight = false;
      timer = setTimeout(loop, Math.max(250, POLL_MS - (Date.now() - started)));
    }
  }

  // Catch up at once when the tab comes back instead of waiting for the next tick.
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') loop();
  });

  loop();
})();
