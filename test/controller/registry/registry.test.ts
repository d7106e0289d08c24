/** Derived state: endpoints, identities, policy scope, and which items each change touches (pure). */
import { t } from 'tap';

import type { Resource } from '../../../src/api/kinds';
import { Registry, ROOT_NAMESPACE, wants } from '../../../src/controller/registry';
import type { Change } from '../../../src/controller/store';

const A = 'nodemesh.io/v1alpha1' as const;

function wl(name: string, ns: string, node: string, labels: Record<string, string>, sa = 'default'): Resource {
  return { apiVersion: A, kind: 'Workload', metadata: { name, namespace: ns, labels }, spec: { node, serviceAccount: sa, addresses: [`198.18.1.${name.length}`], ready: true } };
}
function svc(name: string, ns: string, selector: Record<string, string>): Resource {
  return { apiVersion: A, kind: 'Service', metadata: { name, namespace: ns }, spec: { selector, addresses: ['198.19.0.1'], ports: [{ port: 80 }] } };
}
function ap(name: string, ns: string, matchLabels?: Record<string, string>): Resource {
  return { apiVersion: A, kind: 'AuthorizationPolicy', metadata: { name, namespace: ns }, spec: { action: 'ALLOW', ...(matchLabels ? { selector: { matchLabels } } : {}) } };
}
function pa(name: string, ns: string, matchLabels?: Record<string, string>): Resource {
  return { apiVersion: A, kind: 'PeerAuthentication', metadata: { name, namespace: ns }, spec: { mtls: { mode: 'STRICT' }, ...(matchLabels ? { selector: { matchLabels } } : {}) } };
}
const added = (r: Resource, version = 1): Change => ({ type: 'ADDED', version, resource: r });

t.test('endpoints and identities', async (t) => {
  const reg = new Registry('PEM');
  reg.load([wl('web-1', 'shop', 'n1', { app: 'web' }, 'web'), wl('web-2', 'shop', 'n2', { app: 'web' }, 'web'), wl('db', 'shop', 'n2', { app: 'db' }), wl('web-x', 'other', 'n1', { app: 'web' }), svc('web', 'shop', { app: 'web' })], 1);
  // A service names its endpoints; nodes hold every workload and resolve them.
  t.same(reg.items.get('Service/shop/web')!.wire.service!.endpoints, ['web-1', 'web-2'], 'only matching workloads of the same namespace');
  t.match(reg.items.get('Workload/shop/web-2')!.wire.workload, { node: 'n2', serviceAccount: 'web', labels: { app: 'web' } }, 'a workload goes in its compact form');
  t.equal(reg.identityOf(reg.get('Workload', 'shop', 'db') as never), 'spiffe://cluster.local/ns/shop/sa/default');
  t.same(reg.workloadsOn('n1').map((w) => w.metadata.name).sort(), ['web-1', 'web-x']);
});

t.test('scope: policies to nodes running what they select, the rest everywhere', async (t) => {
  const reg = new Registry('PEM');
  reg.load(
    [
      wl('a', 'shop', 'n1', { app: 'a' }),
      wl('b', 'shop', 'n2', { app: 'b' }),
      wl('c', 'ops', 'n3', { app: 'a' }),
      pa('only-a', 'shop', { app: 'a' }),
      pa('all-shop', 'shop'),
      pa('mesh-a', ROOT_NAMESPACE, { app: 'a' }),
      ap('deny-a', 'shop', { app: 'a' }),
      svc('s', 'shop', { app: 'a' }),
    ],
    1,
  );
  const has = (key: string): string[] => ['n1', 'n2', 'n3', 'n4'].filter((n) => wants(reg.items.get(key)!, n));
  const table: [string, string[]][] = [
    // Every node resolves every workload's address (tunnel even without a Service).
    ['Workload/shop/a', ['n1', 'n2', 'n3', 'n4']],
    ['PeerAuthentication/shop/only-a', ['n1']],
    ['PeerAuthentication/shop/all-shop', ['n1', 'n2']],
    [`PeerAuthentication/${ROOT_NAMESPACE}/mesh-a`, ['n1', 'n3']],
    // The destination's node decides: only nodes running what it selects.
    ['AuthorizationPolicy/shop/deny-a', ['n1']],
    ['Service/shop/s', ['n1', 'n2', 'n3', 'n4']],
    ['MeshConfig//default', ['n1', 'n2', 'n3', 'n4']],
    ['TrustBundle//bundle', ['n1', 'n2', 'n3', 'n4']],
    // Every node refuses a revoked peer, whichever way the tunnel goes.
    ['RevocationList//revoked', ['n1', 'n2', 'n3', 'n4']],
  ];
  for (const [key, nodes] of table) t.same(has(key), nodes, key);
});

t.test('a change marks exactly what it touches', async (t) => {
  const reg = new Registry('PEM');
  reg.load([wl('a', 'shop', 'n1', { app: 'a' }), wl('b', 'shop', 'n2', { app: 'b' }), svc('sa', 'shop', { app: 'a' }), svc('sb', 'shop', { app: 'b' }), pa('only-a', 'shop', { app: 'a' })], 1);
  // b moves into app=a: sb loses its endpoint, sa gains one, only-a now reaches n2.
  const dirty = reg.apply([{ type: 'MODIFIED', version: 2, resource: wl('b', 'shop', 'n2', { app: 'a' }) }]);
  t.same([...dirty].sort(), ['PeerAuthentication/shop/only-a', 'Service/shop/sa', 'Service/shop/sb', 'Workload/shop/b']);
  t.ok(wants(reg.items.get('PeerAuthentication/shop/only-a')!, 'n2'));
  const v = reg.items.get('Service/shop/sa')!.version;
  t.ok(v > reg.items.get('Workload/shop/a')!.version, 'the changed item got a newer item version');
  // Reapplying the same thing changes nothing.
  t.same([...reg.apply([{ type: 'MODIFIED', version: 3, resource: wl('b', 'shop', 'n2', { app: 'a' }) }])], []);
  // Readiness is the workload's own: services name their endpoints, so only the workload changes.
  const b = wl('b', 'shop', 'n2', { app: 'a' });
  const notReady = { ...b, spec: { ...(b.spec as object), ready: false } } as Resource;
  t.same([...reg.apply([{ type: 'MODIFIED', version: 4, resource: notReady }])], ['Workload/shop/b'], 'a readiness change touches one item');
  // A deletion removes the item, and is remembered for nodes that were away.
  const seq = reg.seq;
  const gone = reg.apply([{ type: 'DELETED', version: 5, resource: wl('a', 'shop', 'n1', { app: 'a' }) }]);
  t.ok(gone.has('Workload/shop/a'));
  t.notOk(reg.items.has('Workload/shop/a'));
  t.same(reg.removedSince(seq), ['Workload/shop/a']);
  t.same(reg.removedSince(reg.seq), []);
});

t.test('where a node takes tunnels is one Node item, not a change to its workloads', async (t) => {
  const reg = new Registry('PEM');
  reg.load([wl('a', 'shop', 'n1', { app: 'a' }), svc('sa', 'shop', { app: 'a' })], 1);
  t.same([...reg.setNodeAddresses('n1', ['198.18.0.1'])], ['Node//n1']);
  t.same(JSON.parse(reg.items.get('Node//n1')!.wire.json!), { kind: 'Node', metadata: { name: 'n1' }, addresses: ['198.18.0.1'] });
  t.same([...reg.setNodeAddresses('n1', ['198.18.0.1'])], [], 'the same addresses again change nothing');
});

t.test('MeshConfig: defaults, and a trust domain change re-derives identities', async (t) => {
  const reg = new Registry('PEM');
  reg.load([wl('a', 'shop', 'n1', {})], 1);
  t.equal(reg.meshConfig().trustDomain, 'cluster.local');
  t.equal(reg.meshConfig().outboundTrafficPolicy.mode, 'ALLOW_ANY');
  const dirty = reg.apply([
    added({ apiVersion: A, kind: 'MeshConfig', metadata: { name: 'default' }, spec: { trustDomain: 'example.org', outboundTrafficPolicy: { mode: 'REGISTRY_ONLY' }, defaultMtlsMode: 'STRICT', certificateLifetimeSeconds: 3600 } }, 2),
  ]);
  t.ok(dirty.has('MeshConfig//default'), 'the mesh config goes to every node: identities are derived there from its trust domain');
  t.match(reg.items.get('MeshConfig//default')!.wire.json, /"trustDomain":"example\.org"/);
  t.equal(reg.identityOf(reg.get('Workload', 'shop', 'a') as never), 'spiffe://example.org/ns/shop/sa/default');
  t.equal(reg.meshConfig().certificateLifetimeSeconds, 3600);
});
