/**
 * The upgrade's hand-over protocol on the admin unix socket (see
 * docs/architecture.md, 'Upgrades that drop nothing'), between two real
 * admin servers and the real client, no root needed: the lease resumes the
 * running side when the new process aborts or goes away, one upgrade at a
 * time, the hand-over carries the drain, and TCP 15000 never takes it.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';

import { t, type Test } from 'tap';

import { prepareUpgrade, startAdmin, type HandoverSide } from '../../src/node-proxy/admin';
import { FlowTable } from '../../src/node-proxy/flows';
import { ProxyMetrics } from '../../src/node-proxy/metrics';

interface Calls {
  prepared: number;
  resumed: string[];
  handedOver: number[];
}

async function running(t: Test, dir: string, name = 'admin.sock'): Promise<{ socket: string; calls: Calls; ports: { admin: number } }> {
  const socket = path.join(dir, name);
  const calls: Calls = { prepared: 0, resumed: [], handedOver: [] };
  const handover: HandoverSide = {
    prepare: () => (calls.prepared++, { pid: 4242, nextFlowId: 17, configVersion: 3 }),
    resume: (reason) => void calls.resumed.push(reason),
    handOver: (drainMs) => (calls.handedOver.push(drainMs), { outbound: 5, tunnelStreams: 2 }),
  };
  const a = await startAdmin(
    { flows: new FlowTable(), configDump: () => ({}), status: () => ({ pid: 4242 }), ready: () => true, metrics: new ProxyMetrics(), handover },
    { adminHost: '127.0.0.1', adminPort: 0, adminSocket: socket, metricsHost: '127.0.0.1', metricsPort: 0, healthHost: '127.0.0.1', healthPort: 0 },
  );
  t.teardown(() => a.close());
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
