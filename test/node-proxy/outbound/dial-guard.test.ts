/**
 * The outbound listener never dials "this host" or its own addresses for a
 * pod, whatever outboundTrafficPolicy says (here the default, ALLOW_ANY).
 * Real sockets; only the origin is handed in: the data path now keeps such
 * connects inside the pod, so no kernel hook produces these origins any more
 * (test/node-proxy/pod-boundary.test.ts shows that part in a lab).
 */
import * as net from 'node:net';
import * as os from 'node:os';

import { t } from 'tap';

import { silentLogger } from '../../../src/log';
import type { Origin } from '../../../src/node-proxy/datapath';
import { ConnectionRecorder, FlowTable } from '../../../src/node-proxy/flows';
import { LISTENER_DEFAULTS } from '../../../src/node-proxy/listeners';
import { UpstreamConnector } from '../../../src/node-proxy/upstream';
import { ProxyMetrics } from '../../../src/node-proxy/metrics';
import { BalancerCache, OutboundServer } from '../../../src/node-proxy/outbound';
import { compilePolicies } from '../../../src/node-proxy/policy';
import { ConfigState, MeshView } from '../../../src/node-proxy/state';

function listen(server: net.Server, host: string): Promise<number> {
  return new Promise((resolve, reject) => server.once('error', reject).listen(0, host, () => resolve((server.address() as net.AddressInfo).port)));
}

/** Connects to the proxy; resolves to what the client saw: the bytes, or the error code. */
function through(port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let got = '';
    s.on('data', (d) => (got += d));
    s.on('end', () => resolve(got || 'EMPTY'));
    s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
  });
}

t.test('passthrough to the proxy host itself is refused, with a flow and a count', async (t) => {
  // Stands in for the admin API: a loopback service of the proxy's namespace.
  let reached = 0;
  const admin = net.createServer((s) => {
    reached++;
    s.end('config_dump\n');
  });
  const adminPort = await listen(admin, '::');
  t.teardown(() => admin.close());

  const nonLoopback = Object.values(os.networkInterfaces())
    .flat()
    .find((i) => i && !i.internal && i.family === 'IPv4')?.address;
  let next: Origin | undefined;
  const flows = new FlowTable();
  const metrics = new ProxyMetrics();
  const view = MeshView.build(new ConfigState(), 'n1');
  t.equal(view.mesh.outboundTrafficPolicy.mode, 'ALLOW_ANY');
  const server = new OutboundServer({
    node: 'n1',
    originOf: () => next,
    workloadOfCookie: () => undefined,
    view: () => view,
    policies: () => compilePolicies([]),
    balancers: new BalancerCache('n1'),
    recorder: new ConnectionRecorder({ node: 'n1', flows, metrics, log: silentLogger(), accessLogLevel: 'silent' }),
    upstream: new UpstreamConnector({ node: 'n1', connectTimeoutMs: LISTENER_DEFAULTS.outbound.connectTimeoutMs }),
    log: silentLogger(),
  });
  const port = await server.listen(0, '127.0.0.1');
  t.teardown(() => server.close(0));

  const cases: [string, string][] = [
    ['0.0.0.0', 'dial-unspecified'],
    ['::', 'dial-unspecified'],
    ['::ffff:0.0.0.0', 'dial-unspecified'],
    ['127.0.0.1', 'dial-loopback'],
    ['127.0.0.2', 'dial-loopback'],
    ['::1', 'dial-loopback'],
    ['::ffff:127.0.0.1', 'dial-loopback'],
  ];
  if (nonLoopback) cases.push([nonLoopback, 'dial-own-address']);
  else t.comment('this namespace has no non-loopback IPv4 address: own-address case skipped');
  for (const [ip, reason] of cases) {
    next = { ip, port: adminPort, netnsCookie: 1n, cgroupId: 1n, pid: 1, family: ip.includes(':') && !ip.startsWith('::ffff:') ? 6 : 4, startNs: 0n };
    t.equal(await through(port), 'ECONNRESET', `${ip}: the client is reset`);
    t.match(flows.list().at(-1), { verdict: 'denied', reason, destination: { originalAddress: ip.includes(':') ? `[${ip}]:${adminPort}` : `${ip}:${adminPort}` } }, `${ip}: a denied flow says ${reason}`);
  }
  t.equal(reached, 0, 'the loopback service was never reached');
  const text = await metrics.registry.metrics();
  for (const reason of new Set(cases.map((c) => c[1]))) t.match(text, new RegExp(`nodemesh_tcp_denied_total\\{[^}]*reason="${reason}"[^}]*\\} [1-9]`), `counted as ${reason}`);
});
