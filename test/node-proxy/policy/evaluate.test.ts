/**
 * The authorization decision against Istio's documented AuthorizationPolicy
 * semantics (reference/config/security/authorization-policy and
 * concepts/security#authorization-policies). Every case runs through both
 * evaluate() and compilePolicies().evaluate().
 */
import { t } from 'tap';

import { API_VERSION, type AuthorizationPolicy, type AuthorizationPolicySpec, type AuthorizationRule } from '../../../src/api/kinds';
import { validateResource } from '../../../src/api/validate';
import { applicablePolicies, compilePolicies, evaluate, ROOT_NAMESPACE, type ConnectionFacts, type Decision } from '../../../src/node-proxy/policy';

const ROOT = ROOT_NAMESPACE;

function policy(ns: string, name: string, action: AuthorizationPolicySpec['action'], rules?: AuthorizationRule[], matchLabels?: Record<string, string>): AuthorizationPolicy {
  const spec: AuthorizationPolicySpec = { action };
  if (matchLabels) spec.selector = { matchLabels };
  if (rules) spec.rules = rules;
  return { apiVersion: API_VERSION, kind: 'AuthorizationPolicy', metadata: { name, namespace: ns }, spec };
}
const allow = (name: string, rules?: AuthorizationRule[], ns = 'foo', sel?: Record<string, string>) => policy(ns, name, 'ALLOW', rules, sel);
const deny = (name: string, rules?: AuthorizationRule[], ns = 'foo', sel?: Record<string, string>) => policy(ns, name, 'DENY', rules, sel);
const audit = (name: string, rules?: AuthorizationRule[], ns = 'foo', sel?: Record<string, string>) => policy(ns, name, 'AUDIT', rules, sel);

const id = (ns: string, sa: string) => `spiffe://cluster.local/ns/${ns}/sa/${sa}`;
const SLEEP = id('foo', 'sleep');

interface FactsIn {
  principal?: string | null;
  srcNs?: string;
  srcIp?: string;
  ns?: string;
  labels?: Record<string, string>;
  dstIp?: string;
  port?: number;
  http?: { method?: string; path?: string; host?: string; headers?: Record<string, string> };
}

/** sleep (foo) at 10.0.1.5 connecting to httpbin (foo) at 10.0.2.7:8000 over TCP, unless told otherwise. */
function facts(f: FactsIn = {}): ConnectionFacts {
  const principal = f.principal === null ? undefined : (f.principal ?? SLEEP);
  const out: ConnectionFacts = {
    source: { ip: f.srcIp ?? '10.0.1.5' },
    destination: { namespace: f.ns ?? 'foo', labels: f.labels ?? { app: 'httpbin', version: 'v1' }, ip: f.dstIp ?? '10.0.2.7', port: f.port ?? 8000 },
  };
  if (principal !== undefined) out.source.principal = principal;
  if (f.srcNs !== undefined) out.source.namespace = f.srcNs;
  if (f.http) out.request = { method: 'GET', path: '/', host: 'httpbin.foo', headers: {}, ...f.http };
  return out;
}

type Want = Pick<Decision, 'allowed' | 'reason'> & { policy?: string; audit?: string[]; considered?: string[] };
const ALLOWED_NO_POLICY: Want = { allowed: true, reason: 'no-allow-policy' };
const allowedBy = (policy: string): Want => ({ allowed: true, reason: 'allowed-by-policy', policy });
const deniedBy = (policy: string): Want => ({ allowed: false, reason: 'explicit-deny', policy });
const notAllowed = (...considered: string[]): Want => ({ allowed: false, reason: 'not-allowed', considered });

interface Case {
  name: string;
  policies: AuthorizationPolicy[];
  facts: ConnectionFacts;
  want: Want;
}

const ALLOW_ALL = allow('allow-all', [{}]);

const cases: Case[] = [
  // --- actions and empty policies ---
  { name: 'no policy at all: allowed', policies: [], facts: facts(), want: ALLOWED_NO_POLICY },
  { name: 'ALLOW without rules is allow-nothing', policies: [allow('allow-nothing')], facts: facts(), want: notAllowed('foo/allow-nothing') },
  { name: 'ALLOW with rules: [] is allow-nothing', policies: [allow('allow-nothing', [])], facts: facts(), want: notAllowed('foo/allow-nothing') },
  { name: 'ALLOW rule {} allows everything', policies: [ALLOW_ALL], facts: facts({ principal: null }), want: allowedBy('foo/allow-all') },
  {
    name: 'DENY rule {} wins over ALLOW rule {}',
    policies: [ALLOW_ALL, deny('deny-all', [{}])],
    facts: facts(),
    want: deniedBy('foo/deny-all'),
  },
  { name: 'DENY without rules matches nothing', policies: [deny('deny-nothing')], facts: facts(), want: ALLOWED_NO_POLICY },
  {
    name: 'one matching ALLOW among several suffices',
    policies: [allow('a', [{ to: [{ operation: { ports: ['9000'] } }] }]), allow('b', [{ to: [{ operation: { ports: ['8000'] } }] }])],
    facts: facts(),
    want: allowedBy('foo/b'),
  },
  {
    name: 'not-allowed lists the ALLOW policies considered, root namespace first',
    policies: [allow('z', [{ to: [{ operation: { ports: ['1'] } }] }]), allow('a', [{ to: [{ operation: { ports: ['2'] } }] }], ROOT)],
    facts: facts(),
    want: notAllowed(`${ROOT}/a`, 'foo/z'),
  },

  // --- principals ---
  {
    name: 'principals: Istio form without spiffe://',
    policies: [allow('p', [{ from: [{ source: { principals: ['cluster.local/ns/foo/sa/sleep'] } }] }])],
    facts: facts(),
    want: allowedBy('foo/p'),
  },
  {
    name: 'principals: full SPIFFE ID is accepted too',
    policies: [allow('p', [{ from: [{ source: { principals: [SLEEP] } }] }])],
    facts: facts(),
    want: allowedBy('foo/p'),
  },
  {
    name: 'principals: another service account does not match',
    policies: [allow('p', [{ from: [{ source: { principals: ['cluster.local/ns/foo/sa/sleep'] } }] }])],
    facts: facts({ principal: id('foo', 'curl') }),
    want: notAllowed('foo/p'),
  },
  {
    name: 'principals ["*"]: any authenticated source',
    policies: [allow('authn', [{ from: [{ source: { principals: ['*'] } }] }])],
    facts: facts(),
    want: allowedBy('foo/authn'),
  },
  {
    name: 'principals ["*"]: a plaintext source matches no principal',
    policies: [allow('authn', [{ from: [{ source: { principals: ['*'] } }] }])],
    facts: facts({ principal: null }),
    want: notAllowed('foo/authn'),
  },
  {
    name: 'principals prefix pattern',
    policies: [allow('p', [{ from: [{ source: { principals: ['cluster.local/ns/foo/*'] } }] }])],
    facts: facts({ principal: id('foo', 'anything') }),
    want: allowedBy('foo/p'),
  },
  {
    name: 'principals suffix pattern does not match another account',
    policies: [allow('p', [{ from: [{ source: { principals: ['*/sa/sleep'] } }] }])],
    facts: facts({ principal: id('bar', 'curl') }),
    want: notAllowed('foo/p'),
  },
  {
    name: 'principals suffix pattern matches across namespaces',
    policies: [allow('p', [{ from: [{ source: { principals: ['*/sa/sleep'] } }] }])],
    facts: facts({ principal: id('bar', 'sleep') }),
    want: allowedBy('foo/p'),
  },
  {
    name: 'DENY notPrincipals ["*"] denies plaintext (require mTLS)',
    policies: [deny('require-mtls', [{ from: [{ source: { notPrincipals: ['*'] } }] }])],
    facts: facts({ principal: null }),
    want: deniedBy('foo/require-mtls'),
  },
  {
    name: 'DENY notPrincipals ["*"] lets authenticated sources through',
    policies: [deny('require-mtls', [{ from: [{ source: { notPrincipals: ['*'] } }] }])],
    facts: facts(),
    want: ALLOWED_NO_POLICY,
  },
  {
    name: 'ALLOW notPrincipals: a listed principal is not allowed',
    policies: [allow('not-sleep', [{ from: [{ source: { notPrincipals: ['cluster.local/ns/foo/sa/sleep'] } }] }])],
    facts: facts(),
    want: notAllowed('foo/not-sleep'),
  },
  {
    name: 'an empty list is the same as an absent field',
    policies: [allow('empty', [{ from: [{ source: { principals: [] } }] }])],
    facts: facts({ principal: null }),
    want: allowedBy('foo/empty'),
  },

  // --- namespaces ---
  {
    name: 'namespaces: source namespace from the principal',
    policies: [allow('ns', [{ from: [{ source: { namespaces: ['bar'] } }] }])],
    facts: facts({ principal: id('bar', 'client') }),
    want: allowedBy('foo/ns'),
  },
  {
    name: 'namespaces: another namespace does not match',
    policies: [allow('ns', [{ from: [{ source: { namespaces: ['bar'] } }] }])],
    facts: facts(),
    want: notAllowed('foo/ns'),
  },
  {
    name: 'namespaces: a plaintext source has no namespace, whatever facts.source.namespace says',
    policies: [allow('ns', [{ from: [{ source: { namespaces: ['foo'] } }] }])],
    facts: facts({ principal: null, srcNs: 'foo' }),
    want: notAllowed('foo/ns'),
  },
  {
    name: 'namespaces wildcard prefix',
    policies: [allow('ns', [{ from: [{ source: { namespaces: ['team-*'] } }] }])],
    facts: facts({ principal: id('team-a', 'web') }),
    want: allowedBy('foo/ns'),
  },
  {
    name: 'DENY notNamespaces denies other namespaces',
    policies: [deny('only-foo', [{ from: [{ source: { notNamespaces: ['foo'] } }] }])],
    facts: facts({ principal: id('bar', 'client') }),
    want: deniedBy('foo/only-foo'),
  },
  {
    name: 'DENY notNamespaces spares the listed namespace',
    policies: [deny('only-foo', [{ from: [{ source: { notNamespaces: ['foo'] } }] }])],
    facts: facts(),
    want: ALLOWED_NO_POLICY,
  },

  // --- from: OR of sources, AND of fields ---
  {
    name: 'from entries are ORed',
    policies: [allow('or', [{ from: [{ source: { principals: ['cluster.local/ns/x/sa/y'] } }, { source: { namespaces: ['bar'] } }] }])],
    facts: facts({ principal: id('bar', 'client') }),
    want: allowedBy('foo/or'),
  },
  {
    name: 'fields of one source are ANDed',
    policies: [allow('and', [{ from: [{ source: { principals: [SLEEP], ipBlocks: ['10.9.0.0/16'] } }] }])],
    facts: facts(),
    want: notAllowed('foo/and'),
  },
  {
    name: 'principals and notPrincipals in one source both apply',
    policies: [allow('both', [{ from: [{ source: { principals: ['cluster.local/ns/foo/*'], notPrincipals: ['cluster.local/ns/foo/sa/sleep'] } }] }])],
    facts: facts(),
    want: notAllowed('foo/both'),
  },

  // --- ipBlocks ---
  {
    name: 'ipBlocks IPv4 CIDR',
    policies: [allow('ip', [{ from: [{ source: { ipBlocks: ['10.0.0.0/16'] } }] }])],
    facts: facts({ principal: null }),
    want: allowedBy('foo/ip'),
  },
  {
    name: 'ipBlocks single address',
    policies: [allow('ip', [{ from: [{ source: { ipBlocks: ['10.0.1.5'] } }] }])],
    facts: facts(),
    want: allowedBy('foo/ip'),
  },
  {
    name: 'ipBlocks single address: a neighbour does not match',
    policies: [allow('ip', [{ from: [{ source: { ipBlocks: ['10.0.1.5'] } }] }])],
    facts: facts({ srcIp: '10.0.1.6' }),
    want: notAllowed('foo/ip'),
  },
  {
    name: 'ipBlocks IPv6 CIDR with host bits set',
    policies: [allow('ip6', [{ from: [{ source: { ipBlocks: ['fd00:10::1/64'] } }] }])],
    facts: facts({ srcIp: 'fd00:10:0:0:abcd::5' }),
    want: allowedBy('foo/ip6'),
  },
  {
    name: 'ipBlocks IPv6 outside the block',
    policies: [allow('ip6', [{ from: [{ source: { ipBlocks: ['fd00:10::/64'] } }] }])],
    facts: facts({ srcIp: 'fd00:11::5' }),
    want: notAllowed('foo/ip6'),
  },
  {
    name: 'ipBlocks: IPv4-mapped IPv6 source counts as IPv4',
    policies: [allow('ip', [{ from: [{ source: { ipBlocks: ['10.0.0.0/8'] } }] }])],
    facts: facts({ srcIp: '::ffff:10.0.1.5' }),
    want: allowedBy('foo/ip'),
  },
  {
    name: 'ipBlocks: an IPv4 block does not match an IPv6 source',
    policies: [allow('ip', [{ from: [{ source: { ipBlocks: ['0.0.0.0/0'] } }] }])],
    facts: facts({ srcIp: 'fd00::1' }),
    want: notAllowed('foo/ip'),
  },
  {
    name: 'DENY notIpBlocks denies sources outside the block',
    policies: [deny('internal-only', [{ from: [{ source: { notIpBlocks: ['10.0.0.0/8', 'fd00::/8'] } }] }])],
    facts: facts({ srcIp: '192.168.1.20' }),
    want: deniedBy('foo/internal-only'),
  },
  {
    name: 'DENY notIpBlocks spares sources inside the block (IPv6)',
    policies: [deny('internal-only', [{ from: [{ source: { notIpBlocks: ['10.0.0.0/8', 'fd00::/8'] } }] }])],
    facts: facts({ srcIp: 'fd12::7' }),
    want: ALLOWED_NO_POLICY,
  },

  // --- to: ports ---
  { name: 'ports match the destination port', policies: [allow('port', [{ to: [{ operation: { ports: ['8000'] } }] }])], facts: facts(), want: allowedBy('foo/port') },
  { name: 'ports: another port', policies: [allow('port', [{ to: [{ operation: { ports: ['9000'] } }] }])], facts: facts(), want: notAllowed('foo/port') },
  {
    name: 'DENY notPorts spares the listed port',
    policies: [deny('only-8000', [{ to: [{ operation: { notPorts: ['8000'] } }] }])],
    facts: facts(),
    want: ALLOWED_NO_POLICY,
  },
  {
    name: 'DENY notPorts denies other ports',
    policies: [deny('only-8000', [{ to: [{ operation: { notPorts: ['8000'] } }] }])],
    facts: facts({ port: 22 }),
    want: deniedBy('foo/only-8000'),
  },
  {
    name: 'to entries are ORed',
    policies: [allow('ports', [{ to: [{ operation: { ports: ['9000'] } }, { operation: { ports: ['8000'] } }] }])],
    facts: facts(),
    want: allowedBy('foo/ports'),
  },
  {
    name: 'from and to are ANDed',
    policies: [allow('ft', [{ from: [{ source: { principals: [SLEEP] } }], to: [{ operation: { ports: ['9000'] } }] }])],
    facts: facts(),
    want: notAllowed('foo/ft'),
  },
  {
    name: 'rules are ORed',
    policies: [allow('two', [{ to: [{ operation: { ports: ['9000'] } }] }, { from: [{ source: { namespaces: ['foo'] } }] }])],
    facts: facts(),
    want: allowedBy('foo/two'),
  },

  // --- HTTP-only fields on TCP ---
  {
    name: 'TCP: an ALLOW rule with methods matches nothing',
    policies: [allow('get', [{ to: [{ operation: { methods: ['GET'] } }] }])],
    facts: facts(),
    want: notAllowed('foo/get'),
  },
  {
    name: 'TCP: an HTTP field in any to entry voids the whole ALLOW rule',
    policies: [allow('mixed', [{ to: [{ operation: { ports: ['8000'] } }, { operation: { paths: ['/api/*'] } }] }])],
    facts: facts(),
    want: notAllowed('foo/mixed'),
  },
  {
    name: 'TCP: other ALLOW rules of the policy still match',
    policies: [allow('mixed', [{ to: [{ operation: { hosts: ['httpbin.foo'] } }] }, { to: [{ operation: { ports: ['8000'] } }] }])],
    facts: facts(),
    want: allowedBy('foo/mixed'),
  },
  {
    name: 'TCP: a DENY rule ignores methods and matches on the rest',
    policies: [ALLOW_ALL, deny('no-post', [{ to: [{ operation: { methods: ['POST'], ports: ['8000'] } }] }])],
    facts: facts(),
    want: deniedBy('foo/no-post'),
  },
  {
    name: 'TCP: a DENY rule still needs its L4 fields',
    policies: [deny('bar-no-post', [{ from: [{ source: { namespaces: ['bar'] } }], to: [{ operation: { methods: ['POST'] } }] }])],
    facts: facts(),
    want: ALLOWED_NO_POLICY,
  },
  {
    name: 'TCP: DENY notRequestPrincipals ["*"] denies every TCP connection',
    policies: [deny('require-jwt', [{ from: [{ source: { notRequestPrincipals: ['*'] } }] }])],
    facts: facts(),
    want: deniedBy('foo/require-jwt'),
  },
  {
    name: 'TCP: an ALLOW rule with requestPrincipals matches nothing',
    policies: [allow('jwt', [{ from: [{ source: { requestPrincipals: ['*'] } }] }])],
    facts: facts(),
    want: notAllowed('foo/jwt'),
  },

  // --- HTTP fields with a request ---
  {
    name: 'HTTP: methods and path prefix',
    policies: [allow('api', [{ to: [{ operation: { methods: ['GET', 'HEAD'], paths: ['/api/*'] } }] }])],
    facts: facts({ http: { method: 'GET', path: '/api/v1/items?limit=5' } }),
    want: allowedBy('foo/api'),
  },
  {
    name: 'HTTP: another method',
    policies: [allow('api', [{ to: [{ operation: { methods: ['GET', 'HEAD'], paths: ['/api/*'] } }] }])],
    facts: facts({ http: { method: 'POST', path: '/api/v1/items' } }),
    want: notAllowed('foo/api'),
  },
  {
    name: 'HTTP: exact path ignores the query string',
    policies: [allow('exact', [{ to: [{ operation: { paths: ['/healthz'] } }] }])],
    facts: facts({ http: { path: '/healthz?verbose=1' } }),
    want: allowedBy('foo/exact'),
  },
  {
    name: 'HTTP: path suffix',
    policies: [deny('no-php', [{ to: [{ operation: { paths: ['*.php'] } }] }])],
    facts: facts({ http: { path: '/admin/index.php' } }),
    want: deniedBy('foo/no-php'),
  },
  {
    name: 'HTTP: path template {*} is one segment',
    policies: [allow('tpl', [{ to: [{ operation: { paths: ['/users/{*}/profile'] } }] }])],
    facts: facts({ http: { path: '/users/a/b/profile' } }),
    want: notAllowed('foo/tpl'),
  },
  {
    name: 'HTTP: hosts compare case-insensitively',
    policies: [allow('host', [{ to: [{ operation: { hosts: ['httpbin.foo'] } }] }])],
    facts: facts({ http: { host: 'HTTPBIN.Foo' } }),
    want: allowedBy('foo/host'),
  },
  {
    name: 'HTTP: an exact host does not match host:port',
    policies: [allow('host', [{ to: [{ operation: { hosts: ['httpbin.foo'] } }] }])],
    facts: facts({ http: { host: 'httpbin.foo:8000' } }),
    want: notAllowed('foo/host'),
  },
  {
    name: 'HTTP: DENY notMethods',
    policies: [deny('read-only', [{ to: [{ operation: { notMethods: ['GET', 'HEAD'] } }] }])],
    facts: facts({ http: { method: 'DELETE' } }),
    want: deniedBy('foo/read-only'),
  },
  {
    name: 'HTTP: requestPrincipals needs a JWT, and there is none',
    policies: [allow('jwt', [{ from: [{ source: { requestPrincipals: ['*'] } }] }])],
    facts: facts({ http: {} }),
    want: notAllowed('foo/jwt'),
  },

  // --- when ---
  {
    name: 'when source.ip',
    policies: [allow('w', [{ when: [{ key: 'source.ip', values: ['10.0.1.0/24'] }] }])],
    facts: facts(),
    want: allowedBy('foo/w'),
  },
  {
    name: 'when remote.ip is the peer address',
    policies: [deny('w', [{ when: [{ key: 'remote.ip', values: ['10.0.1.5'] }] }])],
    facts: facts(),
    want: deniedBy('foo/w'),
  },
  {
    name: 'when destination.ip and destination.port',
    policies: [
      allow('w', [
        {
          when: [
            { key: 'destination.ip', values: ['10.0.2.0/24'] },
            { key: 'destination.port', notValues: ['22'] },
          ],
        },
      ]),
    ],
    facts: facts(),
    want: allowedBy('foo/w'),
  },
  {
    name: 'when conditions are ANDed',
    policies: [
      allow('w', [
        {
          when: [
            { key: 'destination.ip', values: ['10.0.2.0/24'] },
            { key: 'destination.port', values: ['22'] },
          ],
        },
      ]),
    ],
    facts: facts(),
    want: notAllowed('foo/w'),
  },
  {
    name: 'when source.namespace with values and notValues',
    policies: [allow('w', [{ when: [{ key: 'source.namespace', values: ['team-*'], notValues: ['team-b'] }] }])],
    facts: facts({ principal: id('team-b', 'x') }),
    want: notAllowed('foo/w'),
  },
  {
    name: 'when source.principal, SPIFFE form',
    policies: [allow('w', [{ when: [{ key: 'source.principal', values: [SLEEP] }] }])],
    facts: facts(),
    want: allowedBy('foo/w'),
  },
  {
    name: 'TCP: when request.headers in ALLOW matches nothing',
    policies: [allow('hdr', [{ when: [{ key: 'request.headers[x-token]', values: ['*'] }] }])],
    facts: facts(),
    want: notAllowed('foo/hdr'),
  },
  {
    name: 'TCP: when request.headers in DENY is ignored',
    policies: [deny('hdr', [{ from: [{ source: { namespaces: ['foo'] } }], when: [{ key: 'request.headers[x-debug]', values: ['1'] }] }])],
    facts: facts(),
    want: deniedBy('foo/hdr'),
  },
  {
    name: 'HTTP: when request.headers, header name case-insensitive',
    policies: [allow('hdr', [{ when: [{ key: 'request.headers[x-token]', values: ['abc*'] }] }])],
    facts: facts({ http: { headers: { 'X-Token': 'abc123' } } }),
    want: allowedBy('foo/hdr'),
  },
  {
    name: 'HTTP: when request.headers notValues on a missing header',
    policies: [deny('hdr', [{ when: [{ key: 'request.headers[x-debug]', notValues: ['*'] }] }])],
    facts: facts({ http: {} }),
    want: deniedBy('foo/hdr'),
  },
  {
    name: 'unknown when key: an ALLOW rule matches nothing',
    policies: [allow('odd', [{ when: [{ key: 'source.color', notValues: ['red'] }] }])],
    facts: facts(),
    want: notAllowed('foo/odd'),
  },
  {
    name: 'unknown when key: a DENY rule matches nothing either',
    policies: [deny('odd', [{ when: [{ key: 'source.color', notValues: ['red'] }] }])],
    facts: facts(),
    want: ALLOWED_NO_POLICY,
  },
  {
    name: 'connection.sni is not known to this proxy: matches nothing',
    policies: [deny('sni', [{ when: [{ key: 'connection.sni', notValues: ['x.example'] }] }])],
    facts: facts(),
    want: ALLOWED_NO_POLICY,
  },

  // --- AUDIT ---
  {
    name: 'AUDIT matches are reported and decide nothing',
    policies: [audit('log-foo', [{ from: [{ source: { namespaces: ['foo'] } }] }])],
    facts: facts(),
    want: { ...ALLOWED_NO_POLICY, audit: ['foo/log-foo'] },
  },
  {
    name: 'AUDIT is reported alongside a denial',
    policies: [audit('log-all', [{}]), audit('log-bar', [{ from: [{ source: { namespaces: ['bar'] } }] }]), deny('deny-all', [{}])],
    facts: facts(),
    want: { ...deniedBy('foo/deny-all'), audit: ['foo/log-all'] },
  },
  {
    name: 'TCP: AUDIT ignores HTTP fields like DENY',
    policies: [audit('log-get', [{ to: [{ operation: { methods: ['GET'] } }] }]), ALLOW_ALL],
    facts: facts(),
    want: { ...allowedBy('foo/allow-all'), audit: ['foo/log-get'] },
  },

  // --- which policies apply ---
  {
    name: 'a root-namespace DENY applies mesh-wide',
    policies: [deny('global', [{ from: [{ source: { notPrincipals: ['*'] } }] }], ROOT), ALLOW_ALL],
    facts: facts({ principal: null }),
    want: deniedBy(`${ROOT}/global`),
  },
  {
    name: 'a root-namespace ALLOW with a selector applies only where it matches',
    policies: [allow('web-only', [{ from: [{ source: { namespaces: ['bar'] } }] }], ROOT, { app: 'web' })],
    facts: facts(),
    want: ALLOWED_NO_POLICY,
  },
  {
    name: 'a root-namespace selector matches workloads in any namespace',
    policies: [allow('httpbin', [{ from: [{ source: { namespaces: ['bar'] } }] }], ROOT, { app: 'httpbin' })],
    facts: facts({ ns: 'other' }),
    want: notAllowed(`${ROOT}/httpbin`),
  },
  {
    name: 'a selector that does not match the workload: policy ignored',
    policies: [allow('v2-nothing', [], 'foo', { app: 'httpbin', version: 'v2' })],
    facts: facts(),
    want: ALLOWED_NO_POLICY,
  },
  {
    name: 'a selector that matches: policy applies',
    policies: [allow('v1-nothing', [], 'foo', { version: 'v1' })],
    facts: facts(),
    want: notAllowed('foo/v1-nothing'),
  },
  {
    name: "another namespace's policies are ignored",
    policies: [deny('deny-all', [{}], 'bar'), allow('allow-nothing', undefined, 'bar')],
    facts: facts(),
    want: ALLOWED_NO_POLICY,
  },
  {
    name: 'a workload in the root namespace: its policies count once',
    policies: [allow('ports', [{ to: [{ operation: { ports: ['1'] } }] }], ROOT), audit('log', [{}], ROOT)],
    facts: facts({ ns: ROOT, labels: {} }),
    want: { ...notAllowed(`${ROOT}/ports`), audit: [`${ROOT}/log`] },
  },
  {
    name: 'root and local DENY both match: the root one is reported',
    policies: [deny('a-local', [{}]), deny('z-global', [{}], ROOT)],
    facts: facts(),
    want: deniedBy(`${ROOT}/z-global`),
  },
];

function pick(d: Decision): Want {
  const out: Want = { allowed: d.allowed, reason: d.reason, audit: d.audit };
  if (d.policy !== undefined) out.policy = d.policy;
  if (d.considered !== undefined) out.considered = d.considered;
  return out;
}

t.ok(cases.length >= 40, `${cases.length} cases`);

for (const c of cases) {
  t.test(c.name, async (t) => {
    const want: Want = { audit: [], ...c.want };
    const direct = evaluate(c.facts, c.policies);
    t.same(pick(direct), want, 'evaluate()');
    const compiled = compilePolicies(c.policies);
    t.equal(compiled.size, c.policies.length);
    t.same(compiled.evaluate(c.facts), direct, 'compilePolicies().evaluate() decides the same');
    // A compiled set is reusable: a second connection gets the same answer.
    t.same(compiled.evaluate(c.facts), direct);
  });
}

t.test('every policy in the table is a valid resource', async (t) => {
  let i = 0;
  for (const c of cases) {
    for (const p of c.policies) {
      const r = validateResource({ source: 'table', index: ++i, value: p });
      t.same(r.problems, [], `${c.name}: ${p.metadata.name}`);
    }
  }
});

t.test('one compiled set serves every destination', async (t) => {
  const policies = [
    deny('no-plaintext', [{ from: [{ source: { notPrincipals: ['*'] } }] }], ROOT),
    allow('httpbin', [{ from: [{ source: { namespaces: ['foo'] } }] }], 'foo', { app: 'httpbin' }),
    allow('db', [{ from: [{ source: { principals: ['cluster.local/ns/bar/sa/api'] } }], to: [{ operation: { ports: ['5432'] } }] }], 'bar', { app: 'db' }),
  ];
  const set = compilePolicies(policies);
  const flows: [string, ConnectionFacts][] = [
    ['foo/sleep -> httpbin', facts()],
    ['plaintext -> httpbin', facts({ principal: null })],
    ['bar/api -> db:5432', facts({ principal: id('bar', 'api'), ns: 'bar', labels: { app: 'db' }, port: 5432 })],
    ['foo/sleep -> db:5432', facts({ ns: 'bar', labels: { app: 'db' }, port: 5432 })],
    ['foo/sleep -> unselected workload in bar', facts({ ns: 'bar', labels: { app: 'cache' } })],
    ['foo/sleep -> workload in the root namespace', facts({ ns: ROOT, labels: {} })],
  ];
  const got = flows.map(([name, f]) => {
    const d = set.evaluate(f);
    t.same(d, evaluate(f, policies), name);
    return [name, d.allowed, d.reason, d.policy];
  });
  t.same(got, [
    ['foo/sleep -> httpbin', true, 'allowed-by-policy', 'foo/httpbin'],
    ['plaintext -> httpbin', false, 'explicit-deny', `${ROOT}/no-plaintext`],
    ['bar/api -> db:5432', true, 'allowed-by-policy', 'bar/db'],
    ['foo/sleep -> db:5432', false, 'not-allowed', undefined],
    ['foo/sleep -> unselected workload in bar', true, 'no-allow-policy', undefined],
    ['foo/sleep -> workload in the root namespace', true, 'no-allow-policy', undefined],
  ]);
});

t.test('applicablePolicies', async (t) => {
  const policies = [
    allow('ns-wide'),
    allow('selected', [], 'foo', { app: 'httpbin' }),
    allow('other-app', [], 'foo', { app: 'web' }),
    allow('other-ns', [], 'bar'),
    allow('mesh-wide', [], ROOT),
    allow('mesh-selected', [], ROOT, { app: 'web' }),
  ];
  const names = applicablePolicies(policies, { namespace: 'foo', labels: { app: 'httpbin' } }).map((p) => p.metadata.name);
  t.same(names, ['ns-wide', 'selected', 'mesh-wide']);
});
