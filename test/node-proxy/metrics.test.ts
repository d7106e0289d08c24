/**
 * Metrics across an upgrade (docs/architecture.md, 'Upgrades that drop
 * nothing'): what a predecessor reports, and /metrics with its reports
 * added in, as a Prometheus scrape reads it.
 */
import t from 'tap';

import { carriedMetrics, connectionLabels, mergeMetrics, ProxyMetrics, type CarriedMetric } from '../../src/node-proxy/metrics';

const labels = connectionLabels({ reporter: 'source', source_workload: 'client', destination_workload: 'web' });
const other = connectionLabels({ reporter: 'source', source_workload: 'client', destination_workload: 'db' });
const req = { ...labels, request_protocol: 'http', response_code: '200', grpc_response_status: '' };

/** `name{labels} value` lines of a scrape, by series. */
function scrape(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const l of text.split('\n')) {
    const m = /^([a-z_]+)(\{.*\})? (\S+)$/.exec(l);
    if (m) out.set(`${m[1]}${m[2] ?? ''}`, Number(m[3]));
  }
  return out;
}

/** The value of the one series of `name` whose labels include every one of `has`. */
function value(series: Map<string, number>, name: string, ...has: string[]): number | undefined {
  const hits = [...series].filter(([k]) => (k === name || k.startsWith(`${name}{`)) && has.every((h) => k.includes(h)));
  return hits.length === 1 ? hits[0]![1] : undefined;
}

t.test('a report carries the traffic counters, histograms and connection gauges, not the per-process metrics', async (t) => {
  const m = new ProxyMetrics();
  m.opened.inc(labels);
  m.active.inc();
  m.configVersion.set(7);
  m.requestDuration.observe(req, 3);
  const report = carriedMetrics(await m.registry.getMetricsAsJSON());
  const names = report.map((x) => x.name);
  t.ok(names.includes('nodemesh_tcp_connections_opened_total'), 'counters');
  t.ok(names.includes('nodemesh_request_duration_milliseconds'), 'histograms');
  t.ok(names.includes('nodemesh_tcp_active_connections'), 'the active connections gauge');
  t.notOk(names.includes('nodemesh_proxy_config_version'), 'not its other gauges');
  t.notOk(
    names.some((n) => n.startsWith('nodemesh_proxy_')),
    'nor its process metrics (CPU, memory, event loop: the new process has its own)',
  );
  t.notOk(names.includes('nodemesh_tcp_closed_connections_total'), 'nor a metric with no series yet');
  t.same(JSON.parse(JSON.stringify(report)), report, 'plain JSON, as the lease sends it');
});

t.test("/metrics add each predecessor's series to this process's, by name and labels", async (t) => {
  const old = new ProxyMetrics();
  old.opened.inc(labels, 5);
  old.opened.inc(other, 2);
  old.requestDuration.observe(req, 3);
  old.requestDuration.observe(req, 700);
  old.active.set(4);
  const report = carriedMetrics(await old.registry.getMetricsAsJSON());
  const m = new ProxyMetrics();
  m.opened.inc(labels, 1);
  m.requestDuration.observe(req, 0.2);
  m.active.set(1);
  m.configVersion.set(9);
  m.fromPredecessor(4242, report);
  const s = scrape((await m.exposition()).body);
  const cases: [string, string[], number][] = [
    ['nodemesh_tcp_connections_opened_total', ['destination_workload="web"'], 6],
    ['nodemesh_tcp_connections_opened_total', ['destination_workload="db"'], 2],
    ['nodemesh_request_duration_milliseconds_bucket', ['le="0.5"'], 1],
    ['nodemesh_request_duration_milliseconds_bucket', ['le="5"'], 2],
    ['nodemesh_request_duration_milliseconds_bucket', ['le="1000"'], 3],
    ['nodemesh_request_duration_milliseconds_bucket', ['le="+Inf"'], 3],
    ['nodemesh_request_duration_milliseconds_count', [], 3],
    ['nodemesh_request_duration_milliseconds_sum', [], 703.2],
    ['nodemesh_tcp_active_connections', [], 5],
    ['nodemesh_proxy_config_version', [], 9],
  ];
  for (const [name, has, want] of cases) t.equal(value(s, name, ...has), want, `${name}${has.length ? `{${has.join(',')}}` : ''} = ${want}`);
  t.ok(value(s, 'nodemesh_proxy_process_start_time_seconds'), "this process's own metrics are all there, those prom-client would leave out of a merge too");
  m.predecessorGone(4242);
  const after = scrape((await m.exposition()).body);
  t.equal(value(after, 'nodemesh_tcp_connections_opened_total', 'destination_workload="web"'), 6, 'its totals stay once it is gone');
  t.equal(value(after, 'nodemesh_tcp_active_connections'), 1, 'its open connections do not');
});

t.test('an upgrade of an upgrade: a report includes what this process carries of its own predecessor, once', async (t) => {
  const a = new ProxyMetrics();
  a.opened.inc(labels, 3);
  const b = new ProxyMetrics();
  b.opened.inc(labels, 2);
  b.fromPredecessor(1, carriedMetrics(await a.registry.getMetricsAsJSON()));
  const c = new ProxyMetrics();
  c.fromPredecessor(2, await b.report());
  t.equal(value(scrape((await c.exposition()).body), 'nodemesh_tcp_connections_opened_total'), 5, 'C shows A and B');
  a.opened.inc(labels, 10);
  b.fromPredecessor(1, carriedMetrics(await a.registry.getMetricsAsJSON()));
  c.fromPredecessor(2, await b.report());
  t.equal(value(scrape((await c.exposition()).body), 'nodemesh_tcp_connections_opened_total'), 15, 'a newer report replaces the last one, never adds to it');
});

t.test('a reported metric this process has not, or has as another type, is left out', async (t) => {
  const m = new ProxyMetrics();
  const foreign: CarriedMetric[] = [
    { name: 'nodemesh_gone_total', help: 'an older version had it', type: 'counter', values: [{ value: 3, labels: {} }] },
    { name: 'nodemesh_tcp_active_connections', help: 'as a counter', type: 'counter', values: [{ value: 99, labels: {} }] },
  ];
  const s = scrape(await mergeMetrics(await m.registry.getMetricsAsJSON(), [foreign]).metrics());
  t.equal(value(s, 'nodemesh_gone_total'), undefined, 'unknown: not shown');
  t.equal(value(s, 'nodemesh_tcp_active_connections'), 0, 'another type: not added');
});
