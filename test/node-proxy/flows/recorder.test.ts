/**
 * The connection recorder: what a user reads after a connection (the flow
 * table, /metrics, the access log) comes from one record and agrees.
 */
import { Writable } from 'node:stream';

import t from 'tap';

import { createLogger } from '../../../src/log';
import { ConnectionRecorder, FlowTable, type FlowEvent } from '../../../src/node-proxy/flows';
import { connectionLabels, ProxyMetrics } from '../../../src/node-proxy/metrics';

function setup(level: 'info' | 'silent' = 'info', capacity = 10_000) {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(l) as Record<string, unknown>);
      done();
    },
  });
  const log = createLogger({ level: 'debug', destination: sink });
  const flows = new FlowTable(capacity);
  const metrics = new ProxyMetrics();
  const recorder = new ConnectionRecorder({ node: 'n1', flows, metrics, log, accessLogLevel: level });
  return { lines, flows, metrics, recorder };
}

async function metric(metrics: ProxyMetrics, name: string): Promise<{ labels: Record<string, string | number>; value: number }[]> {
  const m = (await metrics.registry.getMetricsAsJSON()).find((x) => x.name === name);
  return (m?.values ?? []) as { labels: Record<string, string | number>; value: number }[];
}

const labels = connectionLabels({ reporter: 'source', source_workload: 'client', source_namespace: 'shop', destination_workload: 'web', destination_namespace: 'shop', connection_security_policy: 'mutual_tls' });
const facts = {
  source: { workload: 'client', namespace: 'shop', ip: '198.18.1.9', port: 40000 },
  destination: { service: 'web', workload: 'web', namespace: 'shop', address: '198.18.2.1:8080', originalAddress: '198.19.0.10:80' },
  security: 'mutual_tls' as const,
  labels,
};

t.test('an open connection: its flow, counters and access-log line agree, and it closes once', async (t) => {
  const { lines, flows, metrics, recorder } = setup();
  const conn = recorder.opened(facts, { reason: 'allowed-by-policy', policy: 'shop/allow-web' });
  t.equal(flows.liveCount, 1, 'live while open');
  t.equal((await metric(metrics, 'nodemesh_tcp_active_connections'))[0]?.value, 1);
  conn.close('closed', 120, 4096);
  conn.close('closed again', 1, 1);
  t.equal(flows.liveCount, 0);
  const [f] = flows.list();
  t.match(f, { verdict: 'allowed', reason: 'allowed-by-policy', policy: 'shop/allow-web', closeReason: 'closed', bytesSent: 120, bytesReceived: 4096, security: 'mutual_tls' }, 'the flow says how it went');
  t.equal((await metric(metrics, 'nodemesh_tcp_active_connections'))[0]?.value, 0, 'active back to 0 after two close() calls');
  t.match(await metric(metrics, 'nodemesh_tcp_connections_closed_total'), [{ value: 1, labels: { destination_workload: 'web' } }], 'closed counted once');
  t.match(await metric(metrics, 'nodemesh_tcp_sent_bytes_total'), [{ value: 120 }]);
  t.match(await metric(metrics, 'nodemesh_tcp_received_bytes_total'), [{ value: 4096 }]);
  await new Promise((r) => setImmediate(r));
  const access = lines.filter((l) => l.access === true);
  t.equal(access.length, 1, 'one access-log line');
  t.match(access[0], { flow: f!.id, src: 'shop/client', srcAddr: '198.18.1.9:40000', service: 'web', dst: '198.18.2.1:8080', verdict: 'allowed', policy: 'shop/allow-web', sent: 120, received: 4096, close: 'closed' });
});

t.test('a refused connection: one closed flow, one denial counted with reason and policy, one log line', async (t) => {
  const { lines, flows, metrics, recorder } = setup();
  recorder.refused(facts, { verdict: 'denied', reason: 'explicit-deny', policy: 'shop/deny-admin' });
  recorder.refused({ ...facts, labels: undefined }, { verdict: 'error', reason: 'no-origin' });
  const [denied, noOrigin] = flows.list();
  t.match(denied, { verdict: 'denied', reason: 'explicit-deny', policy: 'shop/deny-admin', closeReason: 'denied', bytesSent: 0 });
  t.match(noOrigin, { verdict: 'error', reason: 'no-origin', closeReason: 'no-origin' });
  t.same(
    (await metric(metrics, 'nodemesh_tcp_denied_total')).map((v) => [v.labels.reason, v.labels.policy, v.value]),
    [['explicit-deny', 'shop/deny-admin', 1]],
    'the denial is counted; a refusal without labels (counted by its listener) is not',
  );
  t.equal((await metric(metrics, 'nodemesh_tcp_active_connections'))[0]?.value, 0, 'a refusal never counts as active');
  await new Promise((r) => setImmediate(r));
  t.same(lines.filter((l) => l.access === true).map((l) => l.reason), ['explicit-deny', 'no-origin'], 'each has its access-log line');
});

t.test('accessLogLevel silent writes no line but keeps flows and counters', async (t) => {
  const { lines, flows, recorder } = setup('silent');
  recorder.opened(facts, { reason: 'allowed' }).close('closed', 1, 2);
  await new Promise((r) => setImmediate(r));
  t.equal(lines.filter((l) => l.access === true).length, 0);
  t.equal(flows.list().length, 1);
});

t.test('requests: counted on their flow, kept among recent ones (bounded), followed, and in the request metrics', async (t) => {
  const { flows, metrics, recorder } = setup('info', 3);
  const events: FlowEvent[] = [];
  flows.follow((e) => events.push(e));
  const conn = recorder.opened(facts, { reason: 'allowed' });
  for (let i = 0; i < 5; i++) recorder.request(conn, { protocol: 'h2', method: 'GET', authority: 'web.shop', path: `/item/${i}`, status: i === 4 ? 503 : 200, route: 'shop/web-split', durationMs: 2 + i });
  t.equal(conn.flow.requests, 5, 'the flow counts its requests');
  t.same(flows.recentRequests().map((r) => r.path), ['/item/2', '/item/3', '/item/4'], 'the table keeps only its capacity of recent requests, oldest first');
  t.same(flows.recentRequests(10, conn.flow.id + 1), [], 'filtered by flow');
  t.equal(events.filter((e) => e.event === 'request').length, 5, 'followers see each request');
  const counted = (await metric(metrics, 'nodemesh_requests_total')).map((v) => [v.labels.response_code, v.labels.request_protocol, v.labels.destination_workload, v.value]);
  t.same(counted.sort(), [['200', 'h2', 'web', 4], ['503', 'h2', 'web', 1]], 'nodemesh_requests_total by response code, with the connection labels');
  const hist = (await metric(metrics, 'nodemesh_request_duration_milliseconds')).filter((v) => (v as { metricName?: string }).metricName === 'nodemesh_request_duration_milliseconds_count');
  t.same(hist.map((v) => v.value).sort(), [1, 4], 'and their durations');
  conn.close('closed', 10, 20);
  t.match(flows.list()[0], { requests: 5 }, 'the closed flow keeps its request count');
});
