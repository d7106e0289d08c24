/**
 * The upgrade's hand-over protocol on the admin unix socket (see
 * docs/architecture.md, 'Upgrades that drop nothing'), between two real
 * admin servers and the real client, no root needed: the lease resumes the
 * running side when the new process aborts or goes away, one upgrade at a
 * time, the hand-over carries the drain, and TCP 15000 never takes it;
 * the running side's metric reports reach the new process from its prepare
 * to the end of its drain, and a report survives being cut into lines.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';

import { t, type Test } from 'tap';

import { prepareUpgrade, ReportAssembler, reportLines, startAdmin, type HandoverSide } from '../../src/node-proxy/admin';
import { FlowTable } from '../../src/node-proxy/flows';
import { connectionLabels, ProxyMetrics, type CarriedMetric } from '../../src/node-proxy/metrics';

interface Calls {
  prepared: number;
  resumed: string[];
  handedOver: number[];
  /** What the running side's proxy awaits once drained. */
  lastReport?: () => Promise<void>;
}

async function running(t: Test, dir: string, name = 'admin.sock', metrics = new ProxyMetrics()): Promise<{ socket: string; calls: Calls; ports: { admin: number } }> {
  const socket = path.join(dir, name);
  const calls: Calls = { prepared: 0, resumed: [], handedOver: [] };
  const handover: HandoverSide = {
    prepare: () => (calls.prepared++, { pid: 4242, nextFlowId: 17, configVersion: 3 }),
    resume: (reason) => void calls.resumed.push(reason),
    handOver: (drainMs, lastReport) => (calls.handedOver.push(drainMs), (calls.lastReport = lastReport), { outbound: 5, tunnelStreams: 2 }),
    report: () => metrics.report(),
  };
  const a = await startAdmin(
    { flows: new FlowTable(), configDump: () => ({}), status: () => ({ pid: 4242 }), ready: () => true, metrics, handover },
    { adminHost: '127.0.0.1', adminPort: 0, adminSocket: socket, metricsHost: '127.0.0.1', metricsPort: 0, healthHost: '127.0.0.1', healthPort: 0 },
  );
  // As the proxy does: the lease ends with the last report.
  t.teardown(async () => (await calls.lastReport?.(), await a.close()));
  return { socket, calls, ports: a.ports };
}

const until = async (pred: () => boolean, ms = 2_000): Promise<boolean> => {
  const end = Date.now() + ms;
  while (!pred() && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
  return pred();
};

t.test('prepare, then hand over with the drain; a second upgrade meanwhile is refused', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-handover-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const old = await running(t, dir);
  const lease = await prepareUpgrade(old.socket, 2_000);
  t.same(lease.prepared, { pid: 4242, nextFlowId: 17, configVersion: 3 }, 'the running side says who it is and where flow ids stand');
  t.equal(old.calls.prepared, 1);
  await t.rejects(prepareUpgrade(old.socket, 2_000), /HTTP 409: .*another upgrade of this proxy is under way/, 'one upgrade at a time');
  t.same(await lease.handOver(300_000, 2_000), { outbound: 5, tunnelStreams: 2 }, 'the hand-over answers with what the old side still carries');
  t.same(old.calls.handedOver, [300_000], 'and passes the drain');
  await t.rejects(prepareUpgrade(old.socket, 2_000), /HTTP 409: .*handed over already/, 'a proxy that handed over takes no other upgrade');
  t.same(old.calls.resumed, [], 'nothing resumed');
});

t.test('an abort, or a new process that goes away, resumes the running side', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-handover-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const old = await running(t, dir);
  const first = await prepareUpgrade(old.socket, 2_000);
  first.abort('cannot listen on tunnel port 15008: EADDRINUSE');
  t.ok(await until(() => old.calls.resumed.length === 1), 'aborted: resumed');
  t.same(old.calls.resumed, ['cannot listen on tunnel port 15008: EADDRINUSE'], 'with the reason');
  // A process that dies holds the socket no more: the same as a socket destroyed here.
  const req = http.request({ socketPath: old.socket, method: 'POST', path: '/upgrade', headers: { connection: 'upgrade', upgrade: 'nodemesh-handover' } });
  req.on('upgrade', (_res, socket) => socket.destroy());
  req.end();
  t.ok(await until(() => old.calls.resumed.length === 2), 'gone: resumed');
  t.match(old.calls.resumed[1], /went away before it took over/);
  const again = await prepareUpgrade(old.socket, 2_000);
  t.equal(again.prepared.pid, 4242, 'and it can be upgraded again');
  again.abort('done');
});

t.test('TCP 15000 does not take an upgrade, and with nothing on the socket there is nothing to upgrade', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-handover-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const old = await running(t, dir);
  const status = await new Promise<number>((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: old.ports.admin, method: 'POST', path: '/upgrade', headers: { connection: 'upgrade', upgrade: 'nodemesh-handover' } });
    req.on('response', (res) => (res.resume(), resolve(res.statusCode ?? 0)));
    req.on('upgrade', (_res, socket) => (socket.destroy(), resolve(101)));
    req.on('error', reject);
    req.end();
  }).catch(() => 0);
  t.not(status, 101, `TCP 15000 answered ${status || 'nothing'}, not a switch`);
  t.equal(old.calls.prepared, 0, 'and the proxy was not asked to prepare');
  await t.rejects(prepareUpgrade(path.join(dir, 'none.sock'), 2_000), /nothing to upgrade: no proxy answers on .*none\.sock \(ENOENT\); start it without --upgrade/);
});

t.test('the admin socket path always answers: a second server takes it over by rename, and the first one closing leaves it', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-handover-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const socket = path.join(dir, 'admin.sock');
  const start = (status: unknown) =>
    startAdmin(
      { flows: new FlowTable(), configDump: () => ({}), status: () => status, ready: () => true, metrics: new ProxyMetrics() },
      { adminHost: '127.0.0.1', adminPort: 0, adminSocket: socket, metricsHost: '127.0.0.1', metricsPort: 0, healthHost: '127.0.0.1', healthPort: 0 },
    );
  const get = () =>
    new Promise<string>((resolve, reject) => {
      http.get({ socketPath: socket, path: '/status', agent: false }, (res) => {
        let b = '';
        res.on('data', (d: Buffer) => (b += d.toString()));
        res.on('end', () => resolve(b.trim()));
      }).on('error', reject);
    });
  const first = await start({ who: 'first' });
  t.teardown(() => first.close());
  t.match(await get(), /"who": "first"/);
  const second = await start({ who: 'second' });
  t.teardown(() => second.close());
  t.match(await get(), /"who": "second"/, 'the path answers from the second at once');
  await first.close();
  t.ok(fs.existsSync(socket), "the first one's closing left the second one's file");
  t.match(await get(), /"who": "second"/);
  await second.close();
  t.notOk(fs.existsSync(socket), 'the second one removes its own file');
});

const labels = connectionLabels({ reporter: 'source', source_workload: 'client', destination_workload: 'web' });
const opened = (r: CarriedMetric[] | undefined): number | undefined => r?.find((m) => m.name === 'nodemesh_tcp_connections_opened_total')?.values[0]?.value;

t.test("the running side's counters reach the new process from its prepare to the end of its drain, then the lease closes", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-handover-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const oldMetrics = new ProxyMetrics();
  oldMetrics.opened.inc(labels, 7);
  const old = await running(t, dir, 'admin.sock', oldMetrics);
  const lease = await prepareUpgrade(old.socket, 2_000);
  t.equal(lease.reports.pid, 4242, 'the reports are the prepared pid’s');
  let latest: CarriedMetric[] | undefined;
  let gone = false;
  lease.reports.subscribe(
    (r) => (latest = r),
    () => (gone = true),
  );
  t.ok(await until(() => opened(latest) === 7, 5_000), 'a report comes with the prepare: what it counted so far');
  oldMetrics.opened.inc(labels, 2);
  t.ok(await until(() => opened(latest) === 9, 5_000), 'and again while it counts on (it still accepts until the hand-over)');
  await lease.handOver(60_000, 2_000);
  oldMetrics.opened.inc(labels, 1);
  oldMetrics.closed.inc(labels, 10);
  t.notOk(gone, 'the lease stays open after the hand-over: the old process drains');
  await old.calls.lastReport!();
  t.equal(opened(latest), 10, 'its last report, once drained, has everything it counted');
  t.equal(latest!.find((m) => m.name === 'nodemesh_tcp_connections_closed_total')?.values[0]?.value, 10, 'the connections it closed while draining too');
  t.ok(await until(() => gone, 2_000), 'then the lease closes');
  const newMetrics = new ProxyMetrics();
  newMetrics.opened.inc(labels, 1);
  newMetrics.fromPredecessor(lease.reports.pid, latest!);
  newMetrics.predecessorGone(lease.reports.pid);
  t.match((await newMetrics.exposition()).body, /nodemesh_tcp_connections_opened_total\{[^}]*source_workload="client"[^}]*\} 11\n/, "the new process's /metrics add them to its own");
});

t.test('a report cut into lines comes back whole; one over the bound is not taken', async (t) => {
  const big: CarriedMetric[] = [
    { name: 'a_total', help: 'a', type: 'counter', values: Array.from({ length: 500 }, (_, i) => ({ value: i, labels: { workload: `w-${i}`.padEnd(40, 'x') } })) },
    { name: 'h', help: 'h', type: 'histogram', values: [{ value: 3, labels: { le: 1 }, metricName: 'h_bucket' }, { value: 3, labels: { le: '+Inf' }, metricName: 'h_bucket' }, { value: 1.5, labels: {}, metricName: 'h_sum' }] },
    { name: 'empty_total', help: 'none', type: 'counter', values: [] },
  ];
  for (const partBytes of [200, 4_096, 65_536]) {
    const lines = reportLines(big, partBytes);
    t.ok(
      lines.every((l) => Buffer.byteLength(l) <= partBytes + 64),
      `parts of ${partBytes} bytes: ${lines.length} lines, none over the part and its frame`,
    );
    const a = new ReportAssembler();
    let whole: ReturnType<ReportAssembler['add']>;
    for (const l of lines) whole = a.add(JSON.parse(l) as Record<string, unknown>, l.length);
    t.same(whole, big.filter((m) => m.values.length > 0), 'reassembled, the same report');
  }
  const a = new ReportAssembler(1_000);
  let r: ReturnType<ReportAssembler['add']>;
  for (const l of reportLines(big, 200)) r = a.add(JSON.parse(l) as Record<string, unknown>, l.length);
  t.equal(r, 'too-large', 'over its bound, the report is refused whole');
  for (const l of reportLines(big.slice(1), 200)) r = a.add(JSON.parse(l) as Record<string, unknown>, l.length);
  t.same(r, [big[1]], 'and the next one that fits is taken');
  t.same(a.add({ event: 'metrics', part: [{ name: 'x', type: 'summary', values: [] }, { name: 'y', type: 'counter', help: '', values: [{ value: 'NaN', labels: {} }, { value: 2, labels: {} }] }] }, 10), undefined);
  t.same(a.add({ event: 'metrics-end' }, 10), [{ name: 'y', help: '', type: 'counter', values: [{ value: 2, labels: {} }] }], 'unknown types and values that are not numbers are dropped');
});
