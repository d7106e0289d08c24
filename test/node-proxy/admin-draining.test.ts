/**
 * An upgrade's draining predecessor keeps its flows in reach (see
 * docs/architecture.md, 'Upgrades that drop nothing'): two real admin
 * servers on one socket path, the old one retired to its side socket, and
 * what /flows on the path answers; a draining process that does not answer
 * is skipped within a bound, and the file of one that is gone is removed.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

import { t, type Test } from 'tap';

import { drainingSocketOf, drainingSockets, mergeFlows, startAdmin } from '../../src/node-proxy/admin';
import { FlowTable, type Flow } from '../../src/node-proxy/flows';
import { ProxyMetrics } from '../../src/node-proxy/metrics';

const flowAt = (id: number, start: string, end?: string): Flow => ({
  id,
  node: 'n1',
  start,
  ...(end ? { end } : {}),
  source: { ip: '198.18.1.2', port: 40000 + id },
  destination: { address: '198.18.2.1:8080', originalAddress: '198.18.2.1:8080' },
  verdict: 'allowed',
  reason: 'passthrough',
  bytesSent: 0,
  bytesReceived: 0,
  security: 'none',
});

t.test('mergeFlows: theirs marked with their pid, all oldest first, the newest `limit`', async (t) => {
  const own = [flowAt(1_000_001, '2026-01-01T00:00:03.000Z'), flowAt(1_000_002, '2026-01-01T00:00:05.000Z')];
  const old = [flowAt(7, '2026-01-01T00:00:01.000Z', '2026-01-01T00:00:02.000Z'), flowAt(9, '2026-01-01T00:00:04.000Z')];
  const cases: { name: string; theirs: { pid: number; flows: Flow[] }[]; limit: number; want: [number, number | undefined][] }[] = [
    { name: 'no predecessor: its own, as they were', theirs: [], limit: 10, want: [[1_000_001, undefined], [1_000_002, undefined]] },
    {
      name: 'one draining',
      theirs: [{ pid: 42, flows: old }],
      limit: 10,
      want: [[7, 42], [1_000_001, undefined], [9, 42], [1_000_002, undefined]],
    },
    { name: 'the limit keeps the newest', theirs: [{ pid: 42, flows: old }], limit: 2, want: [[9, 42], [1_000_002, undefined]] },
    { name: 'one that answered nothing', theirs: [{ pid: 42, flows: [] }], limit: 10, want: [[1_000_001, undefined], [1_000_002, undefined]] },
  ];
  for (const c of cases) t.same(mergeFlows(own, c.theirs, c.limit).map((f) => [f.id, f.drainingPid]), c.want, c.name);
  t.equal(old[1]!.drainingPid, undefined, "the predecessor's flows are copied, not changed");
});

function get(socket: string, urlPath: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ socketPath: socket, path: urlPath, agent: false }, (res) => {
        let b = '';
        res.on('data', (d: Buffer) => (b += d.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: b }));
      })
      .on('error', reject);
  });
}

async function admin(t: Test, socket: string, flows: FlowTable) {
  const a = await startAdmin(
    { flows, configDump: () => ({}), status: () => ({}), ready: () => true, metrics: new ProxyMetrics() },
    { adminHost: '127.0.0.1', adminPort: 0, adminSocket: socket, metricsHost: '127.0.0.1', metricsPort: 0, healthHost: '127.0.0.1', healthPort: 0 },
  );
  t.teardown(() => a.close());
  return a;
}

const src = { source: { ip: '198.18.1.2', port: 40000 }, destination: { address: '198.18.2.1:8080', originalAddress: '198.18.2.1:8080' }, security: 'none' as const };
const open = (table: FlowTable, workload: string): Flow => table.open({ node: 'n1', ...src, source: { ...src.source, workload }, verdict: 'allowed', reason: 'passthrough' });

t.test("after the hand-over the admin socket's /flows lists the draining process's flows, until it closes", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-draining-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const socket = path.join(dir, 'admin.sock');
  const oldFlows = new FlowTable();
  const held = open(oldFlows, 'held');
  oldFlows.close(open(oldFlows, 'short'), 'closed', 1, 1);
  const old = await admin(t, socket, oldFlows);
  const newFlows = new FlowTable();
  newFlows.continueFrom(1_000_000);
  await admin(t, socket, newFlows);
  open(newFlows, 'fresh');
  // Prepared: the old process still serves, on TCP 15000 among others, and lists its own flows once there.
  await old.serveDraining();
  const own = await new Promise<Flow[]>((resolve, reject) =>
    http
      .get({ host: '127.0.0.1', port: old.ports.admin, path: '/flows', agent: false }, (res) => {
        let b = '';
        res.on('data', (d: Buffer) => (b += d.toString()));
        res.on('end', () => resolve(JSON.parse(b) as Flow[]));
      })
      .on('error', reject),
  );
  t.same(own.map((f) => f.source.workload).sort(), ['held', 'short'], 'the prepared process does not list its own side socket’s flows again');
  await old.retire();
  t.same(drainingSockets(socket), [{ pid: process.pid, file: drainingSocketOf(socket, process.pid) }], 'the old one answers on its side socket');
  const all = JSON.parse((await get(socket, '/flows')).body) as Flow[];
  // (Ordered by start, which may be one millisecond for all three.)
  t.same(
    all.map((f) => [f.source.workload, f.drainingPid]).sort(),
    [
      ['fresh', undefined],
      ['held', process.pid],
      ['short', process.pid],
    ],
    "the admin socket lists the old process's flows, marked with its pid, and the new one's",
  );
  const live = JSON.parse((await get(socket, '/flows?live=1')).body) as Flow[];
  t.same(live.map((f) => f.source.workload).sort(), ['fresh', 'held'], 'filtered by the old one too');

  // Followers get the old process's events as well.
  const events: { event: string; flow: Flow }[] = [];
  const req = http.get({ socketPath: socket, path: '/flows?follow=1', agent: false }, (res) => {
    let rest = '';
    res.on('data', (d: Buffer) => {
      rest += d.toString();
      let i: number;
      while ((i = rest.indexOf('\n')) >= 0) {
        events.push(JSON.parse(rest.slice(0, i)) as { event: string; flow: Flow });
        rest = rest.slice(i + 1);
      }
    });
  });
  req.on('error', () => {});
  t.teardown(() => req.destroy());
  const until = async (pred: () => boolean): Promise<boolean> => {
    const end = Date.now() + 5_000;
    while (!pred() && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    return pred();
  };
  t.ok(await until(() => events.some((e) => e.flow.source.workload === 'held' && e.flow.drainingPid === process.pid)), 'a follower starts with the old one’s flows');
  oldFlows.close(held, 'closed', 10, 20);
  t.ok(
    await until(() => events.some((e) => e.event === 'close' && e.flow.source.workload === 'held' && e.flow.drainingPid === process.pid)),
    'and sees its connections close',
  );
  await old.close();
  t.notOk(fs.existsSync(drainingSocketOf(socket, process.pid)), 'once it exits its side socket is gone');
  t.same(
    (JSON.parse((await get(socket, '/flows')).body) as Flow[]).map((f) => f.source.workload),
    ['fresh'],
    'and its flows with it',
  );
});

t.test('an upgrade given up: the side socket goes', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-draining-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const socket = path.join(dir, 'admin.sock');
  const a = await admin(t, socket, new FlowTable());
  await a.serveDraining();
  t.ok(fs.existsSync(drainingSocketOf(socket, process.pid)), 'prepared: it answers on its side socket');
  await a.stopDraining();
  t.notOk(fs.existsSync(drainingSocketOf(socket, process.pid)), 'resumed: no longer');
  t.same(drainingSockets(socket), []);
});

t.test('a draining process that does not answer is skipped within a bound; the file of one that is gone is removed', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-draining-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const socket = path.join(dir, 'admin.sock');
  const flows = new FlowTable();
  open(flows, 'mine');
  await admin(t, socket, flows);
  // Accepts and says nothing: a process stuck while it drains (its pid: this test's parent, which runs).
  const stuck = net.createServer(() => {});
  await new Promise<void>((r) => stuck.listen(drainingSocketOf(socket, process.ppid), r));
  t.teardown(() => stuck.close());
  // A file left by a process killed while it drained.
  const dead = spawnSync(process.execPath, ['-e', '']).pid;
  fs.writeFileSync(drainingSocketOf(socket, dead), '');
  const started = Date.now();
  const r = await get(socket, '/flows');
  t.equal(r.status, 200, 'the admin socket answers');
  t.same((JSON.parse(r.body) as Flow[]).map((f) => f.source.workload), ['mine'], 'with its own flows');
  t.ok(Date.now() - started < 10_000, `without waiting on the stuck one (${Date.now() - started} ms)`);
  t.notOk(fs.existsSync(drainingSocketOf(socket, dead)), "the dead one's file is removed");
  t.ok(fs.existsSync(drainingSocketOf(socket, process.ppid)), 'the stuck one, which runs, is left alone');
});
