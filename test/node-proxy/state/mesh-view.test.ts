/**
 * The proxy's lookups, kept up to date in place from each version's changed
 * keys: after any sequence of versions they must say what a view built from
 * scratch says (pure: no sockets).
 */
import { t } from 'tap';

import type { ConfigMessage, Item } from '../../../src/api/proto';
import { ConfigState, MeshView } from '../../../src/node-proxy/state';

const workload = (name: string, node: string, app: string, ready = true, addr = `198.18.0.${name.length + 10}`): Item => ({
  key: `Workload/shop/${name}`,
  workload: { node, serviceAccount: app, addresses: [addr], labels: { app }, ready, netns: '', resourceVersion: '1' },
});
const service = (name: string, endpoints: string[], vip = '198.19.0.1'): Item => ({
  key: `Service/shop/${name}`,
  service: { json: JSON.stringify({ kind: 'Service', metadata: { name, namespace: 'shop' }, spec: { selector: { app: name }, addresses: [vip], ports: [{ port: 80 }] } }), endpoints },
});
const node = (name: string, addresses: string[]): Item => ({ key: `Node//${name}`, json: JSON.stringify({ kind: 'Node', metadata: { name }, addresses }) });
const mesh = (trustDomain: string): Item => ({ key: 'MeshConfig//default', json: JSON.stringify({ kind: 'MeshConfig', metadata: { name: 'default' }, spec: { trustDomain } }) });
const policy = (name: string): Item => ({ key: `AuthorizationPolicy/shop/${name}`, json: JSON.stringify({ kind: 'AuthorizationPolicy', metadata: { name, namespace: 'shop' }, spec: { action: 'DENY' } }) });

/** What a user of the view can see, in a comparable form. */
function seen(v: MeshView): unknown {
  return {
    services: [...v.services.values()].map((s) => ({ key: s.key, vip: s.addresses, endpoints: s.endpoints.map((e) => [e.workload, e.ready, e.identity, e.node, [...(e.nodeAddresses ?? [])]]) })).sort((a, b) => (a.key < b.key ? -1 : 1)),
    workloads: [...v.workloads.values()].map((w) => [w.key, w.identity, w.ready, [...w.nodeAddresses], w.local]).sort(),
    local: v.localWorkloads.map((w) => w.key).sort(),
    at: ['198.18.0.12', '198.18.0.13', '198.18.0.99', '198.18.0.14'].map((a) => v.workloadAt(a)?.key ?? null),
    vip: ['198.19.0.1', '198.19.0.2'].map((a) => v.serviceAt(a, 80)?.service.key ?? null),
    nodes: ['n1', 'n2'].map((n) => [...v.nodeAddresses(n)]),
    policies: v.policies.map((p) => p.metadata.name).sort(),
    trust: v.mesh.trustDomain,
  };
}

t.test('kept in place, the view says what a view built from scratch says', async (t) => {
  const state = new ConfigState();
  let version = 1;
  state.apply({ snapshot: { version, items: [workload('a1', 'n1', 'a'), workload('a2', 'n2', 'a'), service('a', ['a1', 'a2', 'a3']), node('n1', ['198.18.0.1'])] } });
  const view = MeshView.build(state, 'n1');
  const steps: [string, Partial<ConfigMessage['delta']> & object][] = [
    ['a workload becomes not ready', { upserts: [workload('a2', 'n2', 'a', false)] }],
    ['a named endpoint arrives after its service', { upserts: [workload('a3', 'n1', 'a', true, '198.18.0.99')] }],
    ['a node says where it takes tunnels', { upserts: [node('n2', ['198.18.0.2', '2001:2::2'])] }],
    ['a workload moves address', { upserts: [workload('a1', 'n1', 'a', true, '198.18.0.14')] }],
    ['a service loses an endpoint and moves VIP', { upserts: [service('a', ['a1', 'a3'], '198.19.0.2')] }],
    ['a second service shares a workload', { upserts: [service('b', ['a1'])] }],
    ['a workload goes', { removals: ['Workload/shop/a1'] }],
    ['the trust domain changes every identity', { upserts: [mesh('example.org')] }],
    ['a policy comes', { upserts: [policy('p1')] }],
    ['a policy and a node go', { removals: ['AuthorizationPolicy/shop/p1', 'Node//n2'] }],
    ['a service goes', { removals: ['Service/shop/b'] }],
  ];
  let versionSeen = '';
  for (const [what, d] of steps) {
    const r = state.apply({ delta: { version: version + 1, fromVersion: version, upserts: d.upserts ?? [], removals: d.removals ?? [] } })!;
    version++;
    const before = view.services.get('Service/shop/a')?.version;
    view.update(state, r.changed);
    t.same(seen(view), seen(MeshView.build(state, 'n1')), what);
    if (what === 'a workload becomes not ready') t.not(view.services.get('Service/shop/a')!.version, before, 'the service gets a new version: balancers see the readiness change');
    versionSeen = view.services.get('Service/shop/a')?.version ?? versionSeen;
  }
  t.equal(view.version, version);
  t.match(view.services.get('Service/shop/a')!.endpoints, [{ workload: 'a3', identity: 'spiffe://example.org/ns/shop/sa/a' }]);
});

t.test('a workload held by a connection sees its update', async (t) => {
  const state = new ConfigState();
  state.apply({ snapshot: { version: 1, items: [workload('a1', 'n2', 'a'), service('a', ['a1'])] } });
  const view = MeshView.build(state, 'n1');
  const held = view.workloadAt('198.18.0.12')!;
  const r = state.apply({ delta: { version: 2, fromVersion: 1, upserts: [node('n2', ['198.18.0.2'])], removals: [] } })!;
  view.update(state, r.changed);
  t.same(held.nodeAddresses, ['198.18.0.2'], 'the same object, now with its node address');
  t.equal(view.services.get('Service/shop/a')!.endpoints[0], held);
});

t.test('HTTPRoutes are found by the services they attach to', async (t) => {
  const route = (name: string, parentRefs: unknown[], ns = 'shop'): Item => ({ key: `HTTPRoute/${ns}/${name}`, json: JSON.stringify({ kind: 'HTTPRoute', metadata: { name, namespace: ns }, spec: { parentRefs, rules: [] } }) });
  const state = new ConfigState();
  state.apply({ snapshot: { version: 1, items: [service('a', []), route('r2', [{ name: 'a' }]), route('r1', [{ name: 'a', port: 80 }, { name: 'b' }]), route('x', [{ name: 'a', namespace: 'shop' }], 'other')] } });
  const view = MeshView.build(state, 'n1');
  t.same(view.routesFor('Service/shop/a').map((r) => `${r.metadata.namespace}/${r.metadata.name}`), ['other/x', 'shop/r1', 'shop/r2'], 'by parentRef, a namespace-less one meaning the route\'s own');
  t.same(view.routesFor('Service/shop/b').map((r) => r.metadata.name), ['r1']);
  t.same(view.routesFor('Service/other/a'), []);
  const r = state.apply({ delta: { version: 2, fromVersion: 1, upserts: [], removals: ['HTTPRoute/shop/r1'] } })!;
  view.update(state, r.changed);
  t.same(view.routesFor('Service/shop/b'), [], 'a removed route is gone');
  t.same(view.routesFor('Service/shop/a').map((x) => x.metadata.name), ['x', 'r2']);
});

t.test('MeshConfig failOpen names the workloads that fail open: a whole namespace, or a selector in one', async (t) => {
  const state = new ConfigState();
  const failOpen = [{ namespace: 'legacy' }, { namespace: 'shop', selector: { matchLabels: { app: 'batch' } } }];
  const item: Item = { key: 'MeshConfig//default', json: JSON.stringify({ kind: 'MeshConfig', metadata: { name: 'default' }, spec: { trustDomain: 'cluster.local', failOpen } }) };
  state.apply({ snapshot: { version: 1, items: [item] } });
  const view = MeshView.build(state, 'n1');
  const cases: [string, { namespace: string; labels: Record<string, string> }, boolean][] = [
    ['every workload of a listed namespace', { namespace: 'legacy', labels: {} }, true],
    ['a selected workload', { namespace: 'shop', labels: { app: 'batch', tier: 'x' } }, true],
    ['another workload of that namespace', { namespace: 'shop', labels: { app: 'web' } }, false],
    ['the same labels in another namespace', { namespace: 'other', labels: { app: 'batch' } }, false],
  ];
  for (const [what, w, want] of cases) t.equal(view.failOpen(w), want, what);
  const none = MeshView.build(new ConfigState(), 'n1');
  t.equal(none.failOpen({ namespace: 'legacy', labels: {} }), false, 'no MeshConfig: every workload fails closed');
});
