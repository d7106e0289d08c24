/**
 * The upstream connector on real loopback sockets (no root): a direct connect,
 * delivery to this node's pods on the socket the proxy gives (the client's
 * address) or from the proxy's own address, the connect
 * timeout, a late tunnel after it, and what each kind of failure tells the
 * endpoint's balancer (a real ROUND_ROBIN balancer, read through its stats).
 */
import * as net from 'node:net';
import { PassThrough, type Duplex } from 'node:stream';

import t, { type Test } from 'tap';

import { createBalancer, type Balancer, type Endpoint } from '../../../src/node-proxy/lb';
import { TunnelError } from '../../../src/node-proxy/tunnel';
import { blameOf, UpstreamConnector, type Target, type TunnelRequest } from '../../../src/node-proxy/upstream';
import { echoTarget, unusedPort } from '../../helpers/net';

const SOURCE = { identity: 'spiffe://cluster.local/ns/shop/sa/client', ip: '198.18.1.9' };

function endpoint(id: string, port: number): Endpoint {
  return { id, address: '127.0.0.1', port, node: 'n2', ready: true };
}
function balancerWith(ep: Endpoint): Balancer {
  const b = createBalancer('ROUND_ROBIN');
  b.update([ep]);
  return b;
}
function failures(b: Balancer, id: string): number {
  return b.stats().find((s) => s.id === id)!.consecutiveFailures;
}
/** A loopback server that records each connection's peer address and closes it. */
async function peerRecorder(t: Test): Promise<{ seen: string[]; port: number }> {
  const seen: string[] = [];
  const server = net.createServer((s) => {
    seen.push(s.remoteAddress ?? '');
    s.destroy();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => server.close());
  return { seen, port: (server.address() as net.AddressInfo).port };
}
function remote(workload: { node?: string; identity?: string }): Target['workload'] {
  return { name: 'web', namespace: 'shop', labels: {}, nodeAddresses: ['198.18.0.2'], ...workload };
}

t.test('a direct connect reaches the target and carries bytes both ways', async (t) => {
  const echo = await echoTarget(t);
  const c = new UpstreamConnector({ node: 'n1', connectTimeoutMs: 5_000 });
  const ep = endpoint('shop/web', echo.port);
  const b = balancerWith(ep);
  const up = (await c.connect({ target: { address: echo.host, port: echo.port, endpoint: ep }, tunneled: false, source: SOURCE }, b)) as net.Socket;
  t.teardown(() => up.destroy());
  up.write('ping');
  const got = await new Promise<string>((resolve) => up.once('data', (d: Buffer) => resolve(d.toString())));
  t.equal(got, 'ping', 'the echo came back');
  t.equal(failures(b, ep.id), 0, 'a success is reported as one');
  t.ok(up.allowHalfOpen, 'half-open is allowed (the destination FIN does not end the pod direction)');
});

t.test("a pod of this node is dialled from the proxy's own address; another node's pod is not", async (t) => {
  const { seen, port } = await peerRecorder(t);
  const c = new UpstreamConnector({ node: 'n1', connectTimeoutMs: 5_000, localAddress: (family) => (family === 4 ? '127.0.0.3' : undefined) });
  const here = await c.connect({ target: { address: '127.0.0.1', port, workload: remote({ node: 'n1' }) }, tunneled: false, source: SOURCE });
  here.destroy();
  const there = await c.connect({ target: { address: '127.0.0.1', port, workload: remote({ node: 'n2' }) }, tunneled: false, source: SOURCE });
  there.destroy();
  const local = c.dialLocal({ host: '127.0.0.1', port });
  await new Promise((resolve) => local.once('connect', resolve));
  local.destroy();
  const deadline = Date.now() + 5_000;
  while (seen.length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  t.same(seen, ['127.0.0.3', '127.0.0.1', '127.0.0.3'], 'this node: from the proxy address; another node: any; dialLocal: from the proxy address');
});

/** Connects from 127.0.0.5, whatever it is asked: a stand-in for a socket bound before it is handed over. */
class BoundAhead extends net.Socket {
  override connect(...args: unknown[]): this {
    return super.connect({ ...(args[0] as net.TcpSocketConnectOpts), localAddress: '127.0.0.5' });
  }
}

t.test("a pod of this node is dialled on the socket deliver() gives, with the client's address; no socket: from the proxy's", async (t) => {
  const { seen, port } = await peerRecorder(t);
  const asked: (string | undefined)[] = [];
  // A socket bound ahead to a loopback address stands in for the addon's transparent one (made in the pod's netns, bound to the client's address).
  const deliver = (_host: string, source: string | undefined): net.Socket | undefined => {
    asked.push(source);
    if (source !== SOURCE.ip) return undefined;
    return new BoundAhead();
  };
  const c = new UpstreamConnector({ node: 'n1', connectTimeoutMs: 5_000, localAddress: (family) => (family === 4 ? '127.0.0.3' : undefined), deliver });
  const here = await c.connect({ target: { address: '127.0.0.1', port, workload: remote({ node: 'n1' }) }, tunneled: false, source: SOURCE });
  here.destroy();
  const there = await c.connect({ target: { address: '127.0.0.1', port, workload: remote({ node: 'n2' }) }, tunneled: false, source: SOURCE });
  there.destroy();
  const local = c.dialLocal({ host: '127.0.0.1', port }, SOURCE.ip);
  await new Promise((resolve) => local.once('connect', resolve));
  local.destroy();
  const fallback = c.dialLocal({ host: '127.0.0.1', port }, '198.18.7.7');
  await new Promise((resolve) => fallback.once('connect', resolve));
  fallback.destroy();
  const deadline = Date.now() + 5_000;
  while (seen.length < 4 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  t.same(seen, ['127.0.0.5', '127.0.0.1', '127.0.0.5', '127.0.0.3'], "this node: deliver()'s socket; another node: not asked; no socket given: from the proxy address");
  t.same(asked, [SOURCE.ip, SOURCE.ip, '198.18.7.7'], 'deliver() is asked with the source pod, for this node only');
});

t.test('a refused connect is the endpoint’s failure: rejected, blamed, counted on its balancer', async (t) => {
  const port = await unusedPort();
  const c = new UpstreamConnector({ node: 'n1', connectTimeoutMs: 5_000 });
  const ep = endpoint('shop/web', port);
  const b = balancerWith(ep);
  const err = await c.connect({ target: { address: '127.0.0.1', port, endpoint: ep }, tunneled: false, source: SOURCE }, b).then(
    () => undefined,
    (e: NodeJS.ErrnoException) => e,
  );
  t.equal(err?.code, 'ECONNREFUSED');
  t.equal(blameOf(err), 'endpoint');
  t.equal(failures(b, ep.id), 1, 'one failure on the endpoint');
});

t.test('a tunnel that answers after the connect timeout is a tunnel timeout, and the late stream is destroyed', async (t) => {
  let late: PassThrough | undefined;
  const tunnel = (req: TunnelRequest): Promise<Duplex> => {
    t.same(req, { sourceIdentity: SOURCE.identity, sourceAddress: SOURCE.ip, destination: { identity: 'spiffe://cluster.local/ns/shop/sa/web', node: 'n2', nodeAddresses: ['198.18.0.2'] }, target: { host: '198.18.2.1', port: 8080 } }, 'the tunnel is asked with the source, the destination node and the target');
    return new Promise((resolve) =>
      setTimeout(() => {
        late = new PassThrough();
        resolve(late);
      }, 150),
    );
  };
  const c = new UpstreamConnector({ node: 'n1', connectTimeoutMs: 50, tunnel });
  const ep = endpoint('shop/web', 8080);
  const b = balancerWith(ep);
  const target = { address: '198.18.2.1', port: 8080, endpoint: ep, workload: remote({ node: 'n2', identity: 'spiffe://cluster.local/ns/shop/sa/web' }) };
  const err = await c.connect({ target, tunneled: true, source: SOURCE }, b).then(
    () => undefined,
    (e: NodeJS.ErrnoException) => e,
  );
  t.equal(err?.code, 'NM_ERR_TUNNEL_TIMEOUT');
  t.match(err?.message, /no tunnel to node n2 within the connect timeout \(50 ms\)/);
  t.equal(blameOf(err), 'tunnel', 'blamed on the tunnel');
  t.equal(failures(b, ep.id), 1, 'a timeout counts against the endpoint tried');
  const deadline = Date.now() + 5_000;
  while (!late && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  await new Promise((r) => setImmediate(r));
  t.ok(late?.destroyed, 'the stream that arrived late was destroyed, not leaked');
});

t.test('what each tunnel failure tells the balancer: only the endpoint or its tunnel is blamed', async (t) => {
  const cases: [TunnelError, 'local' | 'tunnel' | 'endpoint' | 'refused', number][] = [
    [new TunnelError('NM_ERR_TUNNEL_LOCAL', 'no certificate for the source'), 'local', 0],
    [new TunnelError('NM_ERR_TUNNEL_REFUSED', 'denied', { status: 403, reason: 'explicit-deny', policy: 'shop/deny' }), 'refused', 0],
    [new TunnelError('NM_ERR_TUNNEL_REFUSED', 'target refused', { status: 502, reason: 'connect-failed: ECONNREFUSED' }), 'endpoint', 1],
    [new TunnelError('NM_ERR_TUNNEL_BROKEN', 'tunnel connection closed'), 'tunnel', 1],
  ];
  for (const [thrown, blame, counted] of cases) {
    const c = new UpstreamConnector({ node: 'n1', connectTimeoutMs: 5_000, tunnel: () => Promise.reject(thrown) });
    const ep = endpoint('shop/web', 8080);
    const b = balancerWith(ep);
    const target = { address: '198.18.2.1', port: 8080, endpoint: ep, workload: remote({ node: 'n2', identity: 'spiffe://cluster.local/ns/shop/sa/web' }) };
    const err = await c.connect({ target, tunneled: true, source: SOURCE }, b).then(
      () => undefined,
      (e: unknown) => e,
    );
    t.equal(err, thrown, `${thrown.code} ${thrown.status ?? ''}: the error is passed on as it is`);
    t.equal(blameOf(err), blame, `blamed: ${blame}`);
    t.equal(failures(b, ep.id), counted, `${counted ? 'counted' : 'not counted'} against the endpoint`);
  }
});

t.test('a tunnel asked without what it needs is a local failure naming what is missing', async (t) => {
  const noTunnels = new UpstreamConnector({ node: 'n1', connectTimeoutMs: 5_000 });
  t.notOk(noTunnels.tunnels, 'a connector without a tunnel says so');
  const target = { address: '198.18.2.1', port: 8080, workload: remote({ node: 'n2', identity: 'spiffe://cluster.local/ns/shop/sa/web' }) };
  const e1 = await noTunnels.connect({ target, tunneled: true, source: SOURCE }).catch((e: TunnelError) => e);
  t.match(e1, { code: 'NM_ERR_TUNNEL_LOCAL', message: /opens no tunnels/ });
  const c = new UpstreamConnector({ node: 'n1', connectTimeoutMs: 5_000, tunnel: async () => new PassThrough() });
  const e2 = await c.connect({ target, tunneled: true, source: { ip: SOURCE.ip } }).catch((e: TunnelError) => e);
  t.match(e2, { code: 'NM_ERR_TUNNEL_LOCAL', message: /no source or destination identity/ });
  t.equal(blameOf(e2), 'local');
});
