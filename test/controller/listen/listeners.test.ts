/**
 * Attacks on the controller's listeners, against a real controller on
 * loopback, while an admin keeps applying and a node stream keeps receiving
 * config. Attackers connect from 127.0.0.2 and up, the real clients from
 * 127.0.0.1, so a per-peer bound can tell them apart.
 */
import { t, type Test } from 'tap';

import { ControllerClient, loadCredentials } from '../../../src/controller/client';
import { ConfigStream } from '../../../src/node-proxy/state';
import { doc, httpGet, sample, testController, type TestController } from '../../helpers/controller';
import { FLAG, FRAME, frame, grpcRequestHeaders, rawH2, silentTcp } from '../../helpers/raw-h2';
import { waitFor } from '../../helpers/wait';

const A = 'nodemesh.io/v1alpha1';
const workload = (i: number) => ({
  apiVersion: A,
  kind: 'Workload',
  metadata: { name: `w-${i}`, namespace: 'shop', labels: { app: 'a' } },
  spec: { node: 'n1', serviceAccount: 'a', addresses: [`198.18.1.${(i % 250) + 1}`] },
});

async function rejected(c: TestController, listener: string, reason: string): Promise<number> {
  return sample((await httpGet(c.controller.metricsPort, '/metrics')).body, 'nodemesh_controller_listener_rejected_total', { listener, reason });
}

/** A node stream for n1 that records each version it holds. */
async function nodeStream(t: Test, c: TestController): Promise<ConfigStream> {
  await c.admin.apply([doc(workload(0))]);
  const s = new ConfigStream({ client: await c.nodeClient('n1'), node: 'n1' });
  s.start();
  t.teardown(() => s.stop());
  t.ok(await waitFor(() => s.state.version > 0, 10_000), 'the node stream holds a config');
  return s;
}

/** Applies and checks that the node stream received that version. */
async function applyReaches(c: TestController, s: ConfigStream, i: number): Promise<boolean> {
  const r = await c.admin.apply([doc(workload(i))]);
  return waitFor(() => s.state.version >= r.version, 10_000);
}

t.test('silent and half-sent TLS handshakes are closed at the handshake timeout', async (t) => {
  const c = await testController(t, undefined, { limits: { handshakeTimeoutMs: 1000 } });
  const s = await nodeStream(t, c);
  // A ClientHello record header promising 512 bytes, and 4 of them.
  const partial = Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc]);
  const conns = [...Array.from({ length: 5 }, () => silentTcp(c.controller.port, '127.0.0.2')), ...Array.from({ length: 5 }, () => silentTcp(c.controller.port, '127.0.0.3', partial))];
  t.teardown(() => conns.forEach((x) => x.socket.destroy()));
  t.ok(await applyReaches(c, s, 1), 'an apply reaches the node while the handshakes hang');
  t.ok(await waitFor(() => conns.every((x) => x.isClosed()), 15_000), 'every hanging handshake was closed by the controller');
  t.equal(await rejected(c, 'grpc', 'handshake_timeout'), 10, 'each is counted');
  const lines = c.logs.filter((l) => l.reason === 'handshake_timeout');
  t.equal(lines.length, 1, 'and logged once for the interval, not once each');
  t.ok(await applyReaches(c, s, 2), 'the node still receives config');
});

t.test('a flood from one address stops at the per-peer bound, many addresses at the total; admin and node keep working', async (t) => {
  const c = await testController(t, undefined, { limits: { maxConnectionsPerPeer: 8, maxConnections: 30, handshakeTimeoutMs: 60_000 } });
  const s = await nodeStream(t, c);
  const flood = Array.from({ length: 100 }, () => silentTcp(c.controller.port, '127.0.0.2'));
  t.teardown(() => flood.forEach((x) => x.socket.destroy()));
  t.ok(await waitFor(() => flood.filter((x) => x.isClosed()).length === 92, 15_000), '92 of 100 connections from one address were refused');
  t.equal(await rejected(c, 'grpc', 'peer_limit'), 92);
  t.ok(await applyReaches(c, s, 1), 'the admin applies and the node receives it');
  const fresh = ControllerClient.fromCredentials(c.controller.credentialsPath);
  t.teardown(() => fresh.close());
  t.ok((await fresh.list('workloads', { namespace: 'shop' })).items.some((w) => w.metadata.name === 'w-1'), 'a new admin client from 127.0.0.1 is served');

  // Four more addresses, 8 each: the total (30) is reached before they are all in.
  const wide = ['127.0.0.3', '127.0.0.4', '127.0.0.5', '127.0.0.6'].flatMap((a) => Array.from({ length: 8 }, () => silentTcp(c.controller.port, a)));
  t.teardown(() => wide.forEach((x) => x.socket.destroy()));
  t.ok(await waitFor(async () => (await rejected(c, 'grpc', 'total_limit')) > 0, 15_000), 'the total bound refuses the rest');
  const text = (await httpGet(c.controller.metricsPort, '/metrics')).body;
  t.equal(sample(text, 'nodemesh_controller_listener_connections', { listener: 'grpc' }), 30, 'open connections are visible and at the bound');
  t.ok(await applyReaches(c, s, 2), 'connections already in keep working at the total bound');
});

t.test('15014: slow and silent connections are closed, one peer is bounded, /metrics keeps answering', async (t) => {
  const c = await testController(t, undefined, { limits: { metricsHeadersTimeoutMs: 1000, metricsRequestTimeoutMs: 2000, metricsIdleTimeoutMs: 3000, metricsMaxConnectionsPerPeer: 4 } });
  const port = c.controller.metricsPort;
  // Slow loris: a request line, then one header byte at a time, never the blank line.
  const loris = Array.from({ length: 3 }, () => silentTcp(port, '127.0.0.2', Buffer.from('GET /metrics HTTP/1.1\r\nHost: x\r\n')));
  const drip = setInterval(() => loris.forEach((x) => x.socket.writable && x.socket.write('x')), 200);
  t.teardown(() => clearInterval(drip));
  const idle = silentTcp(port, '127.0.0.3');
  const crowd = Array.from({ length: 6 }, () => silentTcp(port, '127.0.0.4'));
  t.teardown(() => [...loris, idle, ...crowd].forEach((x) => x.socket.destroy()));
  let answered = 0;
  const closedAll = waitFor(() => loris.every((x) => x.isClosed()) && idle.isClosed(), 20_000);
  const scrape = (async () => {
    while (!loris.every((x) => x.isClosed()) || !idle.isClosed()) {
      if ((await httpGet(port, '/metrics')).status === 200) answered++;
      await new Promise((r) => setTimeout(r, 100));
      if (answered > 400) break;
    }
  })();
  t.ok(await closedAll, 'the slow requests and the silent connection were closed');
  await scrape;
  t.ok(answered > 0, `/metrics answered ${answered} scrapes meanwhile`);
  t.ok(await waitFor(() => crowd.every((x) => x.isClosed()), 10_000), 'of 6 silent connections from one peer, 2 are refused and 4 time out');
  const text = (await httpGet(port, '/metrics')).body;
  t.equal(sample(text, 'nodemesh_controller_listener_rejected_total', { listener: 'metrics', reason: 'request_timeout' }), 8, 'each slow or silent connection is counted once');
  t.equal(sample(text, 'nodemesh_controller_listener_rejected_total', { listener: 'metrics', reason: 'peer_limit' }), 2, 'so are the refused ones');
  t.equal((await httpGet(port, '/healthz')).status, 200);
});

t.test('HTTP/2 floods on 15010 end that session; other sessions keep working', async (t) => {
  const c = await testController(t, undefined, { limits: { idleTimeoutMs: 2000 } });
  const s = await nodeStream(t, c);
  const ca = loadCredentials(c.controller.credentialsPath).ca;
  const port = c.controller.port;
  const rst = (id: number): Buffer => frame(FRAME.RST_STREAM, 0, id, Buffer.from([0, 0, 0, 8]));
  const open = (id: number): Buffer => frame(FRAME.HEADERS, FLAG.END_HEADERS, id, grpcRequestHeaders('/nodemesh.v1.Resources/List'));
  let applying = true;
  let applied = 0;
  let lost = 0;
  const loop = (async () => {
    for (let i = 1; applying; i++) {
      if (await applyReaches(c, s, i)) applied++;
      else lost++;
    }
  })();

  const cases: { name: string; reason: string; make: (i: number) => Buffer; first?: Buffer }[] = [
    { name: 'rapid reset (HEADERS then RST_STREAM)', reason: 'reset_flood', make: (i) => Buffer.concat([open(2 * i + 1), rst(2 * i + 1)]) },
    { name: 'PING flood on a session with a call open', reason: 'ping_flood', first: open(1), make: () => frame(FRAME.PING, 0, 0, Buffer.alloc(8)) },
    { name: 'SETTINGS flood on a session with a call open', reason: 'settings_flood', first: open(1), make: () => frame(FRAME.SETTINGS, 0, 0) },
  ];
  for (const k of cases) {
    const h = await rawH2({ port, ca, localAddress: '127.0.0.2' });
    t.teardown(() => h.socket.destroy());
    if (k.first) h.socket.write(k.first);
    const f = h.flood(k.make);
    t.ok(await waitFor(() => h.isClosed(), 15_000), `${k.name}: the controller closed the session (after ${f.sent()} frames)`);
    f.stop();
    t.ok((await rejected(c, 'grpc', k.reason)) >= 1, `${k.name}: counted as ${k.reason}`);
  }

  // A session that never calls holds nothing past the idle timeout, even while it pings slowly.
  const quiet = await rawH2({ port, ca, localAddress: '127.0.0.3' });
  t.teardown(() => quiet.socket.destroy());
  const ping = setInterval(() => quiet.socket.writable && quiet.socket.write(frame(FRAME.PING, 0, 0, Buffer.alloc(8))), 500);
  t.teardown(() => clearInterval(ping));
  t.ok(await waitFor(() => quiet.isClosed(), 15_000), 'a session without calls is closed at the idle timeout');
  clearInterval(ping);

  applying = false;
  await loop;
  t.ok(applied > 0, `${applied} applies reached the node meanwhile`);
  t.equal(lost, 0, 'none failed to reach it');
  t.equal(c.controller.hub.connectedCount, 1, 'the node is still connected');
});
