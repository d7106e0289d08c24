/** What one outbound attempt does, decided without I/O: a table (pure, no root). */
import { t } from 'tap';

import type { AuthorizationPolicy } from '../../../src/api/kinds';
import { planAttempt, type AttemptInput, type Target } from '../../../src/node-proxy/outbound/planner';
import { compilePolicies, type DialVerdict } from '../../../src/node-proxy/policy';

const policies = compilePolicies([
  { apiVersion: 'nodemesh.io/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'deny-guest', namespace: 'shop' }, spec: { selector: { matchLabels: { app: 'db' } }, action: 'DENY', rules: [{ from: [{ source: { principals: ['cluster.local/ns/shop/sa/guest'] } }] }] } } as AuthorizationPolicy,
]);
const wl = (name: string, node: string): Target['workload'] => ({ name, namespace: 'shop', labels: { app: name }, identity: `spiffe://cluster.local/ns/shop/sa/${name}`, node, nodeAddresses: node === 'n2' ? ['198.18.0.2'] : [] });
const local = (name: string): Target => ({ address: '198.18.1.5', port: 5432, workload: wl(name, 'n1') });
const remote = (name: string): Target => ({ address: '198.18.2.5', port: 5432, workload: wl(name, 'n2') });
const own = (a: string): DialVerdict => (a === '198.18.0.1' ? { allowed: false, reason: 'dial-own-address' } : { allowed: true });
const base: AttemptInput = { node: 'n1', target: undefined, tried: 0, source: { identity: 'spiffe://cluster.local/ns/shop/sa/web', namespace: 'shop', ip: '198.18.1.2' }, tunnels: true, dialCheck: own, policies };
const guest = { identity: 'spiffe://cluster.local/ns/shop/sa/guest', namespace: 'shop', ip: '198.18.1.3' };

const table: [string, Partial<AttemptInput>, Record<string, unknown>][] = [
  ['no endpoint at all', {}, { kind: 'none', reason: 'no-endpoint' }],
  ['none left after attempts', { tried: 2 }, { kind: 'none', reason: 'connect-failed' }],
  ['same node, allowed', { target: local('db') }, { kind: 'connect', tunneled: false, decision: { allowed: true } }],
  ['same node, denied by a policy, named', { target: local('db'), source: guest }, { kind: 'deny', tunneled: false, reason: 'explicit-deny', policy: 'shop/deny-guest' }],
  ['another node: the tunnel, its proxy decides', { target: remote('db'), source: guest }, { kind: 'connect', tunneled: true, decision: undefined }],
  ['another node without a source identity', { target: remote('db'), source: { ip: '198.18.1.9' } }, { kind: 'deny', tunneled: true, reason: 'unknown-source' }],
  ['another node, no tunnels here: straight, decided here', { target: remote('db'), source: guest, tunnels: false }, { kind: 'deny', tunneled: false, reason: 'explicit-deny' }],
  ['passthrough to an outside address', { target: { address: '198.18.200.1', port: 443 } }, { kind: 'connect', tunneled: false, decision: undefined }],
  ['passthrough to this node', { target: { address: '198.18.0.1', port: 15000 } }, { kind: 'deny', tunneled: false, reason: 'dial-own-address' }],
];

for (const [name, input, want] of table) {
  t.test(name, async (t) => {
    t.match(planAttempt({ ...base, ...input }), want);
  });
}
