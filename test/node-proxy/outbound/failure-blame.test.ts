/**
 * Whose fault a failed connect is decides what the outbound listener does
 * next: an endpoint's own failure is held against it (its balancer's
 * consecutive failures, ejection) and another endpoint is tried; a tunnel's
 * too; a local one (no certificate for the source) fails the connection once
 * and blames no endpoint; a refusal is a policy's decision. The real
 * listener on loopback, the tunnel answered by this test (no root). Also:
 * close() stops accepting at once and bounds its drain.
 */
import * as net from 'node:net';
import { PassThrough } from 'node:stream';

import { t, type Test } from 'tap';

import type { Item } from '../../../src/api/proto';
import { silentLogger } from '../../../src/log';
import { ConnectionRecorder, FlowTable } from '../../../src/node-proxy/flows';
import { LISTENER_DEFAULTS, ListenerReporter } from '../../../src/node-proxy/listeners';
import { ProxyMetrics } from '../../../src/node-proxy/metrics';
import { BalancerCache, OutboundServer } from '../../../src/node-proxy/outbound';
import { blameOf, UpstreamConnector, type TunnelRequest } from '../../../src/node-proxy/upstream';
import { compilePolicies } from '../../../src/node-proxy/policy';
import { ConfigState, MeshView, type WorkloadView } from '../../../src/node-proxy/state';
import { TunnelError } from '../../../src/node-proxy/tunnel';
import { waitFor } from '../../helpers/wait';

const w = (name: string, node: string, addr: string, serviceAccount = name): Item => ({ key: `Workload/shop/${name}`, workload: { node, serviceAccount, addresses: [addr], labels: { app: 'web' }, ready: true, netns: '', resourceVersion: '' } });
const service = (endpoints: string[]): Item => ({
  key: 'Service/shop/web',
  service: { json: JSON.stringify({ kind: 'Service', metadata: { name: 'web', namespace: 'shop' }, spec: { selector: { app: 'web' }, addresses: ['198.19.0.10'], ports: [{ port: 80 }], loadBalancer: { policy: 'ROUND_ROBIN' } } }), endpoints },
});
const svc = service(['web-a', 'web-b']);
const node = (name: string, a: string): Item => ({ key: `Node//${name}`, json: JSON.stringify({ kind: 'Node', metadata: { name }, addresses: [a] }) });

t.test('blame by tunnel error', async (t) => {
  const refused = (status: number): TunnelError => new TunnelError('NM_ERR_TUNNEL_REFUSED', 'x', { status, reason: 'r' });
  const table: [unknown, string][] = [
    [new TunnelError('NM_ERR_TUNNEL_LOCAL', 'no certificate'), 'local'],
    [new TunnelError('NM_ERR_TUNNEL_BAD_ARGUMENT', 'bad pem'), 'local'],
    [new TunnelError('NM_ERR_TUNNEL_TLS', 'wrong identity'), 'tunnel'],
    [new TunnelError('NM_ERR_TUNNEL_BROKEN', 'gone'), 'tunnel'],
    [new TunnelError('NM_ERR_TUNNEL_TIMEOUT', 'slow'), 'tunnel'],
    [refused(403), 'refused'],
    [refused(502), 'endpoint'],
    [refused(504), 'endpoint'],
    [refused(404), 'endpoint'],
    [refused(503), 'tunnel'],
    [Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }), 'endpoint'],
  ];
  for (const [err, blame] of table) t.equal(blameOf(err), blame, `${(err as { code?: string }).code} ${(err as { status?: number }).status ?? ''} -> ${blame}`);
});

async function setup(
  t: Test,
  tunnel: (req: TunnelRequest) => Promise<PassThrough>,
  items: Item[] = [w('web-a', 'n2', '198.18.2.1'), w('web-b', 'n3', '198.18.3.1'), svc],
): Promise<{ port: number; flows: FlowTable; balancers: BalancerCache; view: MeshView; server: OutboundServer }> {
  const state = new ConfigState();
  state.apply({ snapshot: { version: 1, items: [...items, node('n2', '198.18.0.2'), node('n3', '198.18.0.3')] } });
  const view = MeshView.build(state, 'n1');
  const client: WorkloadView = { key: 'Workload/shop/client', name: 'client', workload: 'client', namespace: 'shop', labels: {}, node: 'n1', addresses: ['198.18.1.9'], identity: 'spiffe://cluster.local/ns/shop/sa/client', serviceAccount: 'client', ready: true, local: true, nodeAddresses: [] };
  const metrics = new ProxyMetrics();
  const flows = new FlowTable();
  const balancers = new BalancerCache('n1');
  const server = new OutboundServer({
    node: 'n1',
    originOf: () => ({ ip: '198.19.0.10', port: 80, netnsCookie: 7n, cgroupId: 0n, pid: 0, family: 4, startNs: 0n }),
    workloadOfCookie: () => client,
    view: () => view,
    policies: () => compilePolicies([]),
    balancers,
    recorder: new ConnectionRecorder({ node: 'n1', flows, metrics, log: silentLogger(), accessLogLevel: 'silent' }),
    upstream: new UpstreamConnector({ node: 'n1', connectTimeoutMs: LISTENER_DEFAULTS.outbound.connectTimeoutMs, tunnel }),
    log: silentLogger(),
    limits: LISTENER_DEFAULTS.outbound,
    reporter: new ListenerReporter({ metrics }),
  });
  const port = await server.listen(0, '127.0.0.1');
  t.teardown(() => server.close(0));
  return { port, flows, balancers, view, server };
}

/** One connection through the listener: what came back, or how it ended. */
function call(port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    let got = '';
    s.on('data', (d: Buffer) => {
      got += d.toString();
      if (got === 'ping') {
        s.destroy();
        resolve('echoed');
      }
    });
    s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
    s.on('close', () => resolve(got ? 'echoed' : 'closed'));
    s.write('ping');
  });
}

const stats = (b: BalancerCache, view: MeshView) => b.get(view.services.get('Service/shop/web')!, 80, 4).stats();

t.test('an endpoint failure is held against that endpoint; the next one serves the connection', async (t) => {
  const tried: string[] = [];
  const { port, balancers, view } = await setup(t, async (req) => {
    tried.push(req.destination.node);
    if (req.destination.node === 'n2') throw new TunnelError('NM_ERR_TUNNEL_REFUSED', 'target refused', { status: 502, reason: 'connect-failed ECONNREFUSED' });
    return new PassThrough();
  });
  for (let i = 0; i < 4; i++) t.equal(await call(port), 'echoed', `connection ${i + 1} served`);
  t.ok(tried.filter((n) => n === 'n2').length >= 1 && tried.includes('n3'));
  const a = stats(balancers, view).find((s) => s.id === 'shop/web-a')!;
  t.ok(a.consecutiveFailures > 0 || a.ejected, `web-a is blamed (${a.consecutiveFailures} failures, ejected ${a.ejected})`);
});

t.test('a local failure blames no endpoint and tries no other', async (t) => {
  const tried: string[] = [];
  const { port, flows, balancers, view } = await setup(t, async (req) => {
    tried.push(req.destination.node);
    throw new TunnelError('NM_ERR_TUNNEL_LOCAL', 'this node holds no certificate for spiffe://cluster.local/ns/shop/sa/client');
  });
  for (let i = 0; i < 6; i++) t.not(await call(port), 'echoed', `connection ${i + 1} fails`);
  t.equal(tried.length, 6, 'one attempt per connection, not one per endpoint');
  for (const s of stats(balancers, view)) t.match(s, { consecutiveFailures: 0, ejected: false }, `${s.id} not blamed`);
  t.ok(await waitFor(() => flows.list({}).some((f) => f.reason === 'local-failure'), 2000));
  t.match(flows.list({}).find((f) => f.reason === 'local-failure'), { verdict: 'error', closeReason: /^local-failure: this node holds no certificate/ }, 'the flow says why');
});

t.test('a tunnel failure moves on to another endpoint', async (t) => {
  const { port, balancers, view } = await setup(t, async (req) => {
    if (req.destination.node === 'n2') throw new TunnelError('NM_ERR_TUNNEL_TLS', 'n2 presented the wrong identity');
    return new PassThrough();
  });
  for (let i = 0; i < 3; i++) t.equal(await call(port), 'echoed');
  t.ok(stats(balancers, view).find((s) => s.id === 'shop/web-a')!.consecutiveFailures > 0, 'the unreachable endpoint is blamed');
});

t.test("a tunnel failure skips the endpoint's siblings behind the same tunnel for that connection, not others on its node", async (t) => {
  // n2 holds web-a and web-a2 (one identity: one tunnel) and web-c (another identity); n3 holds web-b.
  const items = [w('web-a', 'n2', '198.18.2.1'), w('web-a2', 'n2', '198.18.2.2', 'web-a'), w('web-c', 'n2', '198.18.2.3'), w('web-b', 'n3', '198.18.3.1'), service(['web-a', 'web-a2', 'web-c', 'web-b'])];
  const attempts: string[][] = [];
  let current: string[] = [];
  const { port, balancers, view } = await setup(
    t,
    async (req) => {
      current.push(req.target.host);
      if (req.destination.identity.endsWith('/sa/web-a')) throw new TunnelError('NM_ERR_TUNNEL_BROKEN', 'node n2 is unreachable for this identity');
      if (req.destination.node === 'n2') throw new TunnelError('NM_ERR_TUNNEL_REFUSED', 'target refused', { status: 502, reason: 'connect-failed ECONNREFUSED' });
      return new PassThrough();
    },
    items,
  );
  for (let i = 0; i < 8; i++) {
    current = [];
    t.equal(await call(port), 'echoed', `connection ${i + 1} served by web-b`);
    attempts.push(current);
  }
  for (const a of attempts) {
    t.ok(a.filter((h) => h === '198.18.2.1' || h === '198.18.2.2').length <= 1, `at most one attempt behind the failing tunnel (${a.join(' -> ')})`);
    t.equal(a.at(-1), '198.18.3.1', 'the connection ends on n3');
  }
  t.ok(attempts.some((a) => a.includes('198.18.2.3') && a.some((h) => h === '198.18.2.1' || h === '198.18.2.2')), 'web-c, another identity on n2, is still tried after a web-a tunnel failed');
  const st = stats(balancers, view);
  const tried = new Set(attempts.flat());
  for (const id of ['web-a', 'web-a2']) {
    const s = st.find((x) => x.id === `shop/${id}`)!;
    const ip = id === 'web-a' ? '198.18.2.1' : '198.18.2.2';
    if (tried.has(ip)) t.ok(s.consecutiveFailures > 0 || s.ejected, `${id}, tried, is blamed`);
  }
});

t.test('a refusal is the destination policy, with its name', async (t) => {
  const { port, flows } = await setup(t, async () => {
    throw new TunnelError('NM_ERR_TUNNEL_REFUSED', 'denied', { status: 403, reason: 'explicit-deny', policy: 'shop/deny-client' });
  });
  t.not(await call(port), 'echoed');
  t.ok(await waitFor(() => flows.list({}).some((f) => f.verdict === 'denied'), 2000));
  t.match(flows.list({}).find((f) => f.verdict === 'denied'), { reason: 'explicit-deny', policy: 'shop/deny-client', security: 'mutual_tls' });
});

t.test('close() stops accepting at once and cuts what is still open at the drain deadline, counted', async (t) => {
  const { port, server, flows } = await setup(t, async () => new PassThrough());
  // A client that never closes: today's drain must not wait for it.
  const held = net.connect({ host: '127.0.0.1', port });
  held.on('error', () => {});
  t.teardown(() => held.destroy());
  t.ok(await waitFor(() => flows.liveCount === 1, 5_000), 'the held connection is live');
  const started = Date.now();
  const closing = server.close(300);
  await new Promise((r) => setTimeout(r, 50));
  const refused = await new Promise<string>((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => resolve('connected'));
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
  });
  t.equal(refused, 'ECONNREFUSED', 'a new connection is refused while draining');
  const cut = await closing;
  const took = Date.now() - started;
  t.equal(cut, 1, 'one connection was cut at the deadline, and said so');
  t.ok(took < 5_000, `close() returned after the drain deadline, not after the last client (${took} ms for a 300 ms drain)`);
  t.ok(await waitFor(() => flows.liveCount === 0, 5_000), 'its flow is closed');
});

t.test('a connection cut while its upstream connects (a drain): the flow closes and the late upstream is not left open', async (t) => {
  let upstream: PassThrough | undefined;
  let answer!: () => void;
  const asked = new Promise<void>((resolve) => {
    answer = resolve;
  });
  let release!: () => void;
  const released = new Promise<void>((resolve) => {
    release = resolve;
  });
  const { port, flows, server } = await setup(t, async () => {
    answer();
    await released;
    upstream = new PassThrough();
    return upstream;
  });
  const c = net.connect({ host: '127.0.0.1', port });
  c.on('error', () => {});
  t.teardown(() => c.destroy());
  await asked;
  t.equal(await server.close(0), 1, 'the drain cut the connecting one');
  release();
  t.ok(await waitFor(() => flows.liveCount === 0 && flows.list().length === 1, 5_000), 'no flow left live');
  t.match(flows.list()[0], { verdict: 'allowed', closeReason: 'client closed before the upstream connected' });
  t.ok(upstream?.destroyed, 'the upstream that arrived late was destroyed');
});
