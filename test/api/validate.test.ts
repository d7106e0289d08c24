/** Resource documents as a user writes them: what is accepted, what defaults fill, and the exact error lines. */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { t } from 'tap';

import {
  KIND_NAMES,
  KINDS,
  MESH_CONFIG_DEFAULTS,
  ResourceError,
  SCHEMA_DIR,
  parseDocuments,
  parseDurationMs,
  validateDocuments,
  validateResource,
  type Resource,
  type SourceDoc,
} from '../../src/api';

const V = 'nodemesh.io/v1alpha1';

function doc(value: unknown, source = 'policies.yaml', index = 2): SourceDoc {
  return { source, index, value };
}

/** The ResourceError `fn` throws; fails when it throws something else or nothing. */
function resourceError(fn: () => unknown): ResourceError {
  try {
    fn();
  } catch (err) {
    if (err instanceof ResourceError) return err;
    throw err;
  }
  throw new Error('expected a ResourceError');
}

// Each good document and the whole resource it must come out as (input plus defaults).
const GOOD: { name: string; value: Record<string, unknown>; want: Resource }[] = [
  {
    name: 'Workload, minimal: serviceAccount, ready and namespace filled',
    value: { apiVersion: V, kind: 'Workload', metadata: { name: 'web-1' }, spec: { node: 'lab-n1', addresses: ['10.1.0.5'] } },
    want: {
      apiVersion: V,
      kind: 'Workload',
      metadata: { name: 'web-1', namespace: 'default' },
      spec: { node: 'lab-n1', addresses: ['10.1.0.5'], serviceAccount: 'default', ready: true },
    },
  },
  {
    name: 'Workload, full: nothing overridden',
    value: {
      apiVersion: V,
      kind: 'Workload',
      metadata: {
        name: 'web-1',
        namespace: 'shop',
        labels: { app: 'web', 'app.kubernetes.io/version': 'v1.2', empty: '' },
        annotations: { 'example.com/note': 'any text, even spaces' },
        uid: '5c1e0c1e-0000-4000-8000-000000000001',
        resourceVersion: '42',
        generation: 3,
        creationTimestamp: '2024-05-01T12:00:00Z',
      },
      spec: {
        node: 'lab-n1',
        serviceAccount: 'web',
        addresses: ['10.1.0.5', '2001:2::5'],
        ports: [{ name: 'http', port: 8080, protocol: 'TCP' }, { port: 9090 }],
        netns: '/run/netns/nm-lab-n1-p1',
        ready: false,
      },
    },
    want: {
      apiVersion: V,
      kind: 'Workload',
      metadata: {
        name: 'web-1',
        namespace: 'shop',
        labels: { app: 'web', 'app.kubernetes.io/version': 'v1.2', empty: '' },
        annotations: { 'example.com/note': 'any text, even spaces' },
        uid: '5c1e0c1e-0000-4000-8000-000000000001',
        resourceVersion: '42',
        generation: 3,
        creationTimestamp: '2024-05-01T12:00:00Z',
      },
      spec: {
        node: 'lab-n1',
        serviceAccount: 'web',
        addresses: ['10.1.0.5', '2001:2::5'],
        ports: [{ name: 'http', port: 8080, protocol: 'TCP' }, { port: 9090 }],
        netns: '/run/netns/nm-lab-n1-p1',
        ready: false,
      },
    },
  },
  {
    name: 'Service, minimal: loadBalancer.policy P2C_EWMA',
    value: { apiVersion: V, kind: 'Service', metadata: { name: 'web' }, spec: { selector: { app: 'web' }, addresses: ['10.96.0.10'], ports: [{ port: 80 }] } },
    want: {
      apiVersion: V,
      kind: 'Service',
      metadata: { name: 'web', namespace: 'default' },
      spec: { selector: { app: 'web' }, addresses: ['10.96.0.10'], ports: [{ port: 80 }], loadBalancer: { policy: 'P2C_EWMA' } },
    },
  },
  {
    name: 'Service, full',
    value: {
      apiVersion: V,
      kind: 'Service',
      metadata: { name: 'web', namespace: 'shop' },
      spec: {
        selector: { app: 'web', tier: 'front' },
        addresses: ['10.96.0.10', 'fd00:96::10'],
        ports: [
          { name: 'http', port: 80, targetPort: 8080, appProtocol: 'http' },
          { name: 'grpc', port: 9000, appProtocol: 'grpc' },
        ],
        loadBalancer: { policy: 'CONSISTENT_HASH', hashOn: { header: 'x-user', source: true } },
      },
    },
    want: {
      apiVersion: V,
      kind: 'Service',
      metadata: { name: 'web', namespace: 'shop' },
      spec: {
        selector: { app: 'web', tier: 'front' },
        addresses: ['10.96.0.10', 'fd00:96::10'],
        ports: [
          { name: 'http', port: 80, targetPort: 8080, appProtocol: 'http' },
          { name: 'grpc', port: 9000, appProtocol: 'grpc' },
        ],
        loadBalancer: { policy: 'CONSISTENT_HASH', hashOn: { header: 'x-user', source: true } },
      },
    },
  },
  {
    name: 'AuthorizationPolicy, minimal: action ALLOW',
    value: { apiVersion: V, kind: 'AuthorizationPolicy', metadata: { name: 'allow-nothing' }, spec: {} },
    want: { apiVersion: V, kind: 'AuthorizationPolicy', metadata: { name: 'allow-nothing', namespace: 'default' }, spec: { action: 'ALLOW' } },
  },
  {
    name: 'AuthorizationPolicy, full (every Istio field)',
    value: {
      apiVersion: V,
      kind: 'AuthorizationPolicy',
      metadata: { name: 'deny-db', namespace: 'shop' },
      spec: {
        selector: { matchLabels: { app: 'db' } },
        action: 'DENY',
        rules: [
          {
            from: [
              {
                source: {
                  principals: ['cluster.local/ns/shop/sa/web'],
                  notPrincipals: ['*/sa/admin'],
                  requestPrincipals: ['*'],
                  notRequestPrincipals: ['bad'],
                  namespaces: ['shop'],
                  notNamespaces: ['test'],
                  ipBlocks: ['10.0.0.0/8', '10.1.2.3', 'fd00::/64'],
                  notIpBlocks: ['10.9.0.0/16'],
                },
              },
            ],
            to: [
              {
                operation: {
                  hosts: ['db.shop'],
                  notHosts: ['x'],
                  ports: ['5432'],
                  notPorts: ['22'],
                  methods: ['GET'],
                  notMethods: ['DELETE'],
                  paths: ['/api/*'],
                  notPaths: ['/admin'],
                },
              },
            ],
            when: [{ key: 'source.ip', values: ['10.0.0.1'] }, { key: 'destination.port', notValues: ['22'] }],
          },
          {},
        ],
      },
    },
    want: {
      apiVersion: V,
      kind: 'AuthorizationPolicy',
      metadata: { name: 'deny-db', namespace: 'shop' },
      spec: {
        selector: { matchLabels: { app: 'db' } },
        action: 'DENY',
        rules: [
          {
            from: [
              {
                source: {
                  principals: ['cluster.local/ns/shop/sa/web'],
                  notPrincipals: ['*/sa/admin'],
                  requestPrincipals: ['*'],
                  notRequestPrincipals: ['bad'],
                  namespaces: ['shop'],
                  notNamespaces: ['test'],
                  ipBlocks: ['10.0.0.0/8', '10.1.2.3', 'fd00::/64'],
                  notIpBlocks: ['10.9.0.0/16'],
                },
              },
            ],
            to: [
              {
                operation: {
                  hosts: ['db.shop'],
                  notHosts: ['x'],
                  ports: ['5432'],
                  notPorts: ['22'],
                  methods: ['GET'],
                  notMethods: ['DELETE'],
                  paths: ['/api/*'],
                  notPaths: ['/admin'],
                },
              },
            ],
            when: [{ key: 'source.ip', values: ['10.0.0.1'] }, { key: 'destination.port', notValues: ['22'] }],
          },
          {},
        ],
      },
    },
  },
  {
    name: 'PeerAuthentication, minimal',
    value: { apiVersion: V, kind: 'PeerAuthentication', metadata: { name: 'strict' }, spec: { mtls: { mode: 'STRICT' } } },
    want: { apiVersion: V, kind: 'PeerAuthentication', metadata: { name: 'strict', namespace: 'default' }, spec: { mtls: { mode: 'STRICT' } } },
  },
  {
    name: 'PeerAuthentication, full',
    value: {
      apiVersion: V,
      kind: 'PeerAuthentication',
      metadata: { name: 'db', namespace: 'shop' },
      spec: { selector: { matchLabels: { app: 'db' } }, mtls: { mode: 'PERMISSIVE' } },
    },
    want: {
      apiVersion: V,
      kind: 'PeerAuthentication',
      metadata: { name: 'db', namespace: 'shop' },
      spec: { selector: { matchLabels: { app: 'db' } }, mtls: { mode: 'PERMISSIVE' } },
    },
  },
  {
    name: 'HTTPRoute, minimal: parent kind, match-all path, backend kind and weight filled',
    value: {
      apiVersion: V,
      kind: 'HTTPRoute',
      metadata: { name: 'web' },
      spec: { parentRefs: [{ name: 'web' }], rules: [{ backendRefs: [{ name: 'web-v1', port: 80 }] }] },
    },
    want: {
      apiVersion: V,
      kind: 'HTTPRoute',
      metadata: { name: 'web', namespace: 'default' },
      spec: {
        parentRefs: [{ name: 'web', kind: 'Service' }],
        rules: [{ matches: [{ path: { type: 'PathPrefix', value: '/' } }], backendRefs: [{ name: 'web-v1', port: 80, kind: 'Service', weight: 1 }] }],
      },
    },
  },
  {
    name: 'HTTPRoute, full: path and header defaults filled inside given matches',
    value: {
      apiVersion: V,
      kind: 'HTTPRoute',
      metadata: { name: 'web', namespace: 'shop' },
      spec: {
        parentRefs: [{ group: 'nodemesh.io', kind: 'Service', name: 'web', namespace: 'shop', port: 80 }],
        hostnames: ['web.shop', '*.example.com'],
        rules: [
          {
            matches: [
              { path: { type: 'Exact', value: '/login' }, method: 'POST' },
              { path: { type: 'RegularExpression', value: '^/v[0-9]+/.*' } },
              { headers: [{ name: 'x-canary', value: 'yes' }], queryParams: [{ type: 'RegularExpression', name: 'debug', value: '^(1|true)$' }] },
            ],
            filters: [
              { type: 'RequestHeaderModifier', requestHeaderModifier: { set: [{ name: 'x-a', value: '1' }], add: [{ name: 'x-b', value: '2' }], remove: ['x-c'] } },
              { type: 'ResponseHeaderModifier', responseHeaderModifier: { remove: ['server'] } },
              { type: 'URLRewrite', urlRewrite: { hostname: 'web.internal', path: { type: 'ReplacePrefixMatch', replacePrefixMatch: '/' } } },
              { type: 'RequestMirror', requestMirror: { backendRef: { name: 'shadow', port: 80 }, percent: 10 } },
            ],
            backendRefs: [
              { name: 'web-v1', port: 80, weight: 90 },
              { group: '', kind: 'Service', name: 'web-v2', namespace: 'shop', port: 8080, weight: 10 },
            ],
            timeouts: { request: '10s', backendRequest: '500ms' },
            retry: { attempts: 3, backoff: '100ms', codes: [502, 503] },
          },
          { matches: [{ path: { value: '/old' } }], filters: [{ type: 'RequestRedirect', requestRedirect: { path: { type: 'ReplaceFullPath', replaceFullPath: '/new' } } }] },
        ],
      },
    },
    want: {
      apiVersion: V,
      kind: 'HTTPRoute',
      metadata: { name: 'web', namespace: 'shop' },
      spec: {
        parentRefs: [{ group: 'nodemesh.io', kind: 'Service', name: 'web', namespace: 'shop', port: 80 }],
        hostnames: ['web.shop', '*.example.com'],
        rules: [
          {
            matches: [
              { path: { type: 'Exact', value: '/login' }, method: 'POST' },
              { path: { type: 'RegularExpression', value: '^/v[0-9]+/.*' } },
              {
                path: { type: 'PathPrefix', value: '/' },
                headers: [{ type: 'Exact', name: 'x-canary', value: 'yes' }],
                queryParams: [{ type: 'RegularExpression', name: 'debug', value: '^(1|true)$' }],
              },
            ],
            filters: [
              { type: 'RequestHeaderModifier', requestHeaderModifier: { set: [{ name: 'x-a', value: '1' }], add: [{ name: 'x-b', value: '2' }], remove: ['x-c'] } },
              { type: 'ResponseHeaderModifier', responseHeaderModifier: { remove: ['server'] } },
              { type: 'URLRewrite', urlRewrite: { hostname: 'web.internal', path: { type: 'ReplacePrefixMatch', replacePrefixMatch: '/' } } },
              { type: 'RequestMirror', requestMirror: { backendRef: { name: 'shadow', port: 80, kind: 'Service' }, percent: 10 } },
            ],
            backendRefs: [
              { name: 'web-v1', port: 80, weight: 90, kind: 'Service' },
              { group: '', kind: 'Service', name: 'web-v2', namespace: 'shop', port: 8080, weight: 10 },
            ],
            timeouts: { request: '10s', backendRequest: '500ms' },
            retry: { attempts: 3, backoff: '100ms', codes: [502, 503] },
          },
          {
            matches: [{ path: { type: 'PathPrefix', value: '/old' } }],
            filters: [{ type: 'RequestRedirect', requestRedirect: { path: { type: 'ReplaceFullPath', replaceFullPath: '/new' }, statusCode: 302 } }],
          },
        ],
      },
    },
  },
  {
    name: 'MeshConfig, minimal (no spec): every default from MESH_CONFIG_DEFAULTS, no namespace added',
    value: { apiVersion: V, kind: 'MeshConfig', metadata: { name: 'default' } },
    want: { apiVersion: V, kind: 'MeshConfig', metadata: { name: 'default' }, spec: { ...MESH_CONFIG_DEFAULTS, outboundTrafficPolicy: { mode: 'ALLOW_ANY' }, failOpen: [] } },
  },
  {
    name: 'MeshConfig, partial: the rest filled',
    value: { apiVersion: V, kind: 'MeshConfig', metadata: { name: 'default' }, spec: { trustDomain: 'example.org', outboundTrafficPolicy: {} } },
    want: {
      apiVersion: V,
      kind: 'MeshConfig',
      metadata: { name: 'default' },
      spec: { trustDomain: 'example.org', outboundTrafficPolicy: { mode: 'ALLOW_ANY' }, defaultMtlsMode: 'PERMISSIVE', certificateLifetimeSeconds: 86400, failOpen: [], sameNodeFastPath: false },
    },
  },
  {
    name: 'MeshConfig, full',
    value: {
      apiVersion: V,
      kind: 'MeshConfig',
      metadata: { name: 'default' },
      spec: {
        trustDomain: 'mesh.example',
        outboundTrafficPolicy: { mode: 'REGISTRY_ONLY' },
        defaultMtlsMode: 'STRICT',
        certificateLifetimeSeconds: 3600,
        failOpen: [{ namespace: 'kube-system' }, { namespace: 'default', selector: { matchLabels: { app: 'legacy' } } }],
        sameNodeFastPath: true,
      },
    },
    want: {
      apiVersion: V,
      kind: 'MeshConfig',
      metadata: { name: 'default' },
      spec: {
        trustDomain: 'mesh.example',
        outboundTrafficPolicy: { mode: 'REGISTRY_ONLY' },
        defaultMtlsMode: 'STRICT',
        certificateLifetimeSeconds: 3600,
        failOpen: [{ namespace: 'kube-system' }, { namespace: 'default', selector: { matchLabels: { app: 'legacy' } } }],
        sameNodeFastPath: true,
      },
    },
  },
];

t.test('good documents are accepted with defaults filled', async (t) => {
  for (const c of GOOD) {
    const before = structuredClone(c.value);
    const r = validateResource(doc(c.value));
    t.same(r.problems, [], `${c.name}: no problems`);
    t.strictSame(r.resource, c.want, `${c.name}: resource`);
    t.strictSame(c.value, before, `${c.name}: input not modified`);
  }
  t.ok(
    KIND_NAMES.every((k) => GOOD.some((c) => c.value.kind === k)),
    'every kind has a good case',
  );
});

t.test('defaults are fresh objects per document', async (t) => {
  const value = { apiVersion: V, kind: 'MeshConfig', metadata: { name: 'default' } };
  const a = validateResource(doc(value)).resource as Resource<'MeshConfig', { outboundTrafficPolicy: { mode: string } }>;
  a.spec.outboundTrafficPolicy.mode = 'REGISTRY_ONLY';
  const b = validateResource(doc(value)).resource as Resource<'MeshConfig', { outboundTrafficPolicy: { mode: string } }>;
  t.equal(b.spec.outboundTrafficPolicy.mode, 'ALLOW_ANY');
});

const AP = (spec: unknown, metadata: unknown = { name: 'deny-db' }): unknown => ({ apiVersion: V, kind: 'AuthorizationPolicy', metadata, spec });
const WL = (spec: Record<string, unknown>, metadata: unknown = { name: 'web-1' }): unknown => ({
  apiVersion: V,
  kind: 'Workload',
  metadata,
  spec: { node: 'lab-n1', addresses: ['10.1.0.5'], ...spec },
});
const SVC = (spec: Record<string, unknown>): unknown => ({
  apiVersion: V,
  kind: 'Service',
  metadata: { name: 'web' },
  spec: { selector: { app: 'web' }, addresses: ['10.96.0.10'], ports: [{ port: 80 }], ...spec },
});
const ROUTE = (rule: Record<string, unknown>, spec: Record<string, unknown> = {}): unknown => ({
  apiVersion: V,
  kind: 'HTTPRoute',
  metadata: { name: 'web' },
  spec: { parentRefs: [{ name: 'web' }], rules: [{ backendRefs: [{ name: 'web-v1', port: 80 }], ...rule }], ...spec },
});
const MC = (metadata: unknown, spec: unknown = {}): unknown => ({ apiVersion: V, kind: 'MeshConfig', metadata, spec });

const P = 'policies.yaml doc 2';
const APX = `${P} (AuthorizationPolicy default/deny-db)`;
const WLX = `${P} (Workload default/web-1)`;
const SVX = `${P} (Service default/web)`;
const RTX = `${P} (HTTPRoute default/web)`;

// Each bad document and every line it must produce, exactly.
const BAD: { name: string; value: unknown; problems: string[] }[] = [
  {
    name: 'port that is not digits',
    value: AP({ rules: [{ to: [{ operation: { ports: ['80', 'http'] } }] }] }),
    problems: [`${APX}: spec.rules[0].to[0].operation.ports[1]: must be a port number (digits, as a string)`],
  },
  {
    name: 'port out of range',
    value: AP({ rules: [{ to: [{ operation: { notPorts: ['70000'] } }] }] }),
    problems: [`${APX}: spec.rules[0].to[0].operation.notPorts[0]: must be a port number 1-65535`],
  },
  {
    name: 'misspelt field gets a suggestion',
    value: AP({ rules: [{ from: [{ source: { principal: ['a'] } }] }] }),
    problems: [`${APX}: spec.rules[0].from[0].source.principal: unknown field (did you mean principals?)`],
  },
  {
    name: 'unknown field far from any: the allowed ones are listed',
    value: AP({ selector: { matchLabels: { app: 'db' } }, xyzzy: true }),
    problems: [`${APX}: spec.xyzzy: unknown field (expected one of selector, action, rules)`],
  },
  {
    name: 'unknown top-level field',
    value: { apiVersion: V, kind: 'AuthorizationPolicy', metadata: { name: 'deny-db' }, specs: {} },
    problems: [`${APX}: spec: required`, `${APX}: specs: unknown field (did you mean spec?)`],
  },
  {
    name: 'action outside the enum',
    value: AP({ action: 'REJECT' }),
    problems: [`${APX}: spec.action: must be one of ALLOW, DENY, AUDIT`],
  },
  {
    name: 'string where a list belongs',
    value: AP({ rules: [{ from: [{ source: { principals: 'cluster.local/ns/a/sa/b' } }] }] }),
    problems: [`${APX}: spec.rules[0].from[0].source.principals: must be array`],
  },
  {
    name: 'bad ipBlocks',
    // An IPv4-mapped block shorter than /96 spans more than IPv4: the proxy could not match it, so it is refused here.
    value: AP({ rules: [{ from: [{ source: { ipBlocks: ['10.0.0.0/33', '10.0.0.0/8', 'fd00::/129', '10.0.0', '::ffff:10.0.0.0/8', '::ffff:10.0.0.0/104'] } }] }] }),
    problems: [
      `${APX}: spec.rules[0].from[0].source.ipBlocks[0]: must be an IP address or CIDR block (like 10.0.0.0/8 or fd00::/64)`,
      `${APX}: spec.rules[0].from[0].source.ipBlocks[2]: must be an IP address or CIDR block (like 10.0.0.0/8 or fd00::/64)`,
      `${APX}: spec.rules[0].from[0].source.ipBlocks[3]: must be an IP address or CIDR block (like 10.0.0.0/8 or fd00::/64)`,
      `${APX}: spec.rules[0].from[0].source.ipBlocks[4]: must be an IP address or CIDR block (like 10.0.0.0/8 or fd00::/64)`,
    ],
  },
  {
    name: 'condition without values',
    value: AP({ rules: [{ when: [{ key: 'source.ip' }] }] }),
    problems: [`${APX}: spec.rules[0].when[0]: must set values or notValues`],
  },
  {
    name: 'selector without matchLabels',
    value: AP({ selector: { app: 'db' } }),
    problems: [`${APX}: spec.selector.matchLabels: required`, `${APX}: spec.selector.app: unknown field (expected one of matchLabels)`],
  },
  {
    name: 'several problems in one document, all reported',
    value: AP({ action: 'deny', rules: [{ to: [{ operation: { ports: [80] } }] }] }, { name: 'deny-db', namespace: 'Shop' }),
    problems: [
      `${P} (AuthorizationPolicy Shop/deny-db): metadata.namespace: must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit`,
      `${P} (AuthorizationPolicy Shop/deny-db): spec.action: must be one of ALLOW, DENY, AUDIT`,
      `${P} (AuthorizationPolicy Shop/deny-db): spec.rules[0].to[0].operation.ports[0]: must be string`,
    ],
  },
  {
    name: 'unknown kind',
    value: { apiVersion: V, kind: 'Foo', metadata: { name: 'x' }, spec: {} },
    problems: [`${P} (Foo default/x): kind: unknown kind "Foo" (one of Workload, Service, AuthorizationPolicy, PeerAuthentication, HTTPRoute, MeshConfig)`],
  },
  {
    name: 'misspelt kind gets a suggestion',
    value: { apiVersion: V, kind: 'Servce', metadata: { name: 'x' }, spec: {} },
    problems: [`${P} (Servce default/x): kind: unknown kind "Servce" (did you mean Service?)`],
  },
  {
    name: 'missing kind',
    value: { apiVersion: V, metadata: { name: 'x' }, spec: {} },
    problems: [`${P} (kind? default/x): kind: required`],
  },
  {
    name: 'wrong apiVersion',
    value: { apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', metadata: { name: 'deny-db' }, spec: {} },
    problems: [`${APX}: apiVersion: must be nodemesh.io/v1alpha1`],
  },
  {
    name: 'missing name: the label uses what is known',
    value: AP({}, { namespace: 'shop' }),
    problems: [`${P} (AuthorizationPolicy): metadata.name: required`],
  },
  {
    name: 'not a mapping',
    value: ['a', 'b'],
    problems: [`${P} (kind?): must be a mapping with apiVersion, kind, metadata and spec (got a list)`],
  },
  {
    name: 'name that is not a DNS-1123 subdomain',
    value: WL({}, { name: 'Web_1' }),
    problems: [
      `${P} (Workload default/Web_1): metadata.name: must be a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit`,
    ],
  },
  {
    name: 'name too long',
    value: WL({}, { name: 'a'.repeat(254) }),
    problems: [`${P} (Workload default/"${'a'.repeat(64)}"… (190 more characters)): metadata.name: must be at most 253 characters`],
  },
  {
    name: 'bad label key and value: the key is named, dotted keys are quoted',
    value: WL({}, { name: 'web-1', labels: { 'bad key': 'x', 'app.kubernetes.io/name': 'not ok' } }),
    problems: [
      `${WLX}: metadata.labels: key "bad key": must be a key like app or example.com/app: an optional DNS prefix of at most 253 characters and '/', then up to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit`,
      `${WLX}: metadata.labels["app.kubernetes.io/name"]: must be a label value: empty or up to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit`,
    ],
  },
  {
    name: 'a lone surrogate in the name: refused before any schema, quoted as an escape',
    value: WL({}, { name: 'web\ud800' }),
    problems: [
      `${P} (Workload default/"web\\ud800"): metadata.name: must be well-formed Unicode: lone surrogate \\ud800 at character 4 (save the file as UTF-8; a \\uD800-\\uDFFF escape must be half of a pair)`,
    ],
  },
  {
    name: 'lone surrogates anywhere: a value deep in spec, a label key, a low surrogate alone',
    value: WL({ serviceAccount: '\udc00x' }, { name: 'web-1', labels: { 'a\ud83d': 'x' } }),
    problems: [
      `${WLX}: metadata.labels: key "a\\ud83d": must be well-formed Unicode: lone surrogate \\ud83d at character 2 (save the file as UTF-8; a \\uD800-\\uDFFF escape must be half of a pair)`,
      `${WLX}: spec.serviceAccount: must be well-formed Unicode: lone surrogate \\udc00 at character 1 (save the file as UTF-8; a \\uD800-\\uDFFF escape must be half of a pair)`,
    ],
  },
  {
    name: 'nesting deeper than the limit: one line at the first level too deep, no stack overflow',
    value: WL({ extra: JSON.parse('['.repeat(10_000) + ']'.repeat(10_000)) as unknown }),
    problems: [
      `${WLX}: spec.extra${'[0]'.repeat(30)}: nested deeper than 32 levels, the limit (no nodemesh resource needs more than about 10: look for unbalanced brackets or a generated document)`,
    ],
  },
  {
    name: 'a huge unknown field name and kind are quoted and cut, not echoed',
    value: { apiVersion: V, kind: 'K'.repeat(100_000), metadata: { name: 'x' }, spec: {} },
    problems: [`${P} ("${'K'.repeat(64)}"… (99936 more characters) default/x): kind: unknown kind "${'K'.repeat(64)}"… (99936 more characters) (one of Workload, Service, AuthorizationPolicy, PeerAuthentication, HTTPRoute, MeshConfig)`],
  },
  {
    name: 'namespace is a DNS-1123 label (63 at most, no dots)',
    value: WL({}, { name: 'web-1', namespace: 'a.b' }),
    problems: [
      `${P} (Workload a.b/web-1): metadata.namespace: must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit`,
    ],
  },
  {
    name: 'a Service name is a DNS-1035 label, as Kubernetes has it',
    value: { apiVersion: V, kind: 'Service', metadata: { name: '1web.v2' }, spec: { selector: { app: 'web' }, addresses: ['10.96.0.10'], ports: [{ port: 80 }] } },
    problems: [`${P} (Service default/1web.v2): metadata.name: must be a DNS-1035 label, as Kubernetes names Services: start with a letter, no '.'`],
  },
  {
    name: 'a Service name longer than 63',
    value: { apiVersion: V, kind: 'Service', metadata: { name: 'w'.repeat(64) }, spec: { selector: { app: 'web' }, addresses: ['10.96.0.10'], ports: [{ port: 80 }] } },
    problems: [`${P} (Service default/${'w'.repeat(64)}): metadata.name: must be at most 63 characters (a DNS-1035 label, as Kubernetes names Services)`],
  },
  {
    name: 'label key prefix longer than 253, label value longer than 63',
    value: WL({}, { name: 'web-1', labels: { [`${'p'.repeat(254)}/app`]: 'v'.repeat(64) } }),
    problems: [
      `${WLX}: metadata.labels: key "${'p'.repeat(64)}"… (194 more characters): must be a key like app or example.com/app: an optional DNS prefix of at most 253 characters and '/', then up to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit`,
      `${WLX}: metadata.labels["${'p'.repeat(64)}"… (194 more characters)]: must be a label value: empty or up to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit`,
    ],
  },
  {
    name: 'annotations over 256 KiB in total',
    value: WL({}, { name: 'web-1', annotations: { a: 'x'.repeat(200_000), b: 'y'.repeat(100_000) } }),
    problems: [`${WLX}: metadata.annotations: must total at most 256 KiB, keys and values (these are 293.0 KiB): keep large data elsewhere`],
  },
  {
    name: 'lists and strings have maximum sizes',
    value: AP({ rules: [{ from: [{ source: { principals: Array.from({ length: 257 }, (_, i) => `p${i}`), namespaces: ['n'.repeat(2049)] } }] }] }),
    problems: [
      `${APX}: spec.rules[0].from[0].source.principals: must have at most 256 items`,
      `${APX}: spec.rules[0].from[0].source.namespaces[0]: must be at most 2048 characters`,
    ],
  },
  {
    name: 'server-set fields of the wrong shape',
    value: WL({}, { name: 'web-1', resourceVersion: 'v7', generation: 1.5, creationTimestamp: 'yesterday' }),
    problems: [
      `${WLX}: metadata.resourceVersion: must be a string of digits (send back the resourceVersion the controller returned)`,
      `${WLX}: metadata.generation: must be integer`,
      `${WLX}: metadata.creationTimestamp: must be an RFC 3339 date-time like 2024-05-01T12:00:00Z`,
    ],
  },
  {
    name: 'Workload without node, bad address, relative netns, bad port',
    value: {
      apiVersion: V,
      kind: 'Workload',
      metadata: { name: 'web-1' },
      spec: { addresses: ['10.1.0.300'], netns: 'nm-lab-n1-p1', ports: [{ port: 0, protocol: 'UDP' }] },
    },
    problems: [
      `${WLX}: spec.node: required`,
      `${WLX}: spec.addresses[0]: must be an IPv4 or IPv6 address`,
      `${WLX}: spec.ports[0].port: must be >= 1`,
      `${WLX}: spec.ports[0].protocol: must be one of TCP`,
      `${WLX}: spec.netns: must be an absolute path like /run/netns/web-1`,
    ],
  },
  {
    name: 'Workload with no addresses',
    value: WL({ addresses: [] }),
    problems: [`${WLX}: spec.addresses: must have at least 1 item`],
  },
  {
    name: 'Workload with three addresses',
    value: WL({ addresses: ['10.1.0.5', '2001:2::5', '10.1.0.6'] }),
    problems: [`${WLX}: spec.addresses: must have at most 2 items`],
  },
  {
    name: 'Workload with two IPv4 addresses',
    value: WL({ addresses: ['10.1.0.5', '10.1.0.6'] }),
    problems: [`${WLX}: spec.addresses: must hold at most one IPv4 and one IPv6 address`],
  },
  {
    name: 'Workload with the same address twice',
    value: WL({ addresses: ['10.1.0.5', '10.1.0.5'] }),
    problems: [`${WLX}: spec.addresses: must not repeat an item (items 0 and 1 are equal)`],
  },
  {
    name: 'Service without selector',
    value: { apiVersion: V, kind: 'Service', metadata: { name: 'web' }, spec: { addresses: ['10.96.0.10'], ports: [{ port: 80 }] } },
    problems: [`${SVX}: spec.selector: required`],
  },
  {
    name: 'Service with an empty selector, no ports',
    value: SVC({ selector: {}, ports: [] }),
    problems: [
      `${SVX}: spec.selector: must select at least one label (a Service with an empty selector would match no workloads)`,
      `${SVX}: spec.ports: must have at least 1 item`,
    ],
  },
  {
    name: 'Service with a bad appProtocol and policy',
    value: SVC({ ports: [{ port: 80, appProtocol: 'HTTP' }], loadBalancer: { policy: 'RANDOM' } }),
    problems: [
      `${SVX}: spec.ports[0].appProtocol: must be one of tcp, http, http2, grpc`,
      `${SVX}: spec.loadBalancer.policy: must be one of P2C_EWMA, ROUND_ROBIN, LEAST_REQUEST, CONSISTENT_HASH`,
    ],
  },
  {
    name: 'CONSISTENT_HASH without hashOn',
    value: SVC({ loadBalancer: { policy: 'CONSISTENT_HASH' } }),
    problems: [`${SVX}: spec.loadBalancer.hashOn: required`],
  },
  {
    name: 'empty hashOn',
    value: SVC({ loadBalancer: { policy: 'CONSISTENT_HASH', hashOn: {} } }),
    problems: [`${SVX}: spec.loadBalancer.hashOn: must set header or source`],
  },
  {
    name: 'Service with a port and a port name used twice',
    value: SVC({ ports: [{ name: 'http', port: 80 }, { name: 'http', port: 80 }] }),
    problems: [`${SVX}: spec.ports[1].port: 80 is already used by spec.ports[0]`, `${SVX}: spec.ports[1].name: "http" is already used by spec.ports[0]`],
  },
  {
    name: 'PeerAuthentication without mtls',
    value: { apiVersion: V, kind: 'PeerAuthentication', metadata: { name: 'pa' }, spec: { selector: { matchLabels: { app: 'db' } } } },
    problems: [`${P} (PeerAuthentication default/pa): spec.mtls: required`],
  },
  {
    name: 'PeerAuthentication with mode DISABLE',
    value: { apiVersion: V, kind: 'PeerAuthentication', metadata: { name: 'pa' }, spec: { mtls: { mode: 'DISABLE' } } },
    problems: [`${P} (PeerAuthentication default/pa): spec.mtls.mode: must be one of STRICT, PERMISSIVE`],
  },
  {
    name: 'HTTPRoute with no parent and no rules',
    value: ROUTE({}, { parentRefs: [], rules: [] }),
    problems: [`${RTX}: spec.parentRefs: must have at least 1 item`, `${RTX}: spec.rules: must have at least 1 item`],
  },
  {
    name: 'HTTPRoute parent of another kind or group',
    value: ROUTE({}, { parentRefs: [{ group: 'gateway.networking.k8s.io', kind: 'Gateway', name: 'gw' }] }),
    problems: [
      `${RTX}: spec.parentRefs[0].group: must be "" or nodemesh.io (the parent and backends are nodemesh Services)`,
      `${RTX}: spec.parentRefs[0].kind: must be Service`,
    ],
  },
  {
    name: 'HTTPRoute backend without port, weight too big',
    value: ROUTE({ backendRefs: [{ name: 'web-v1', weight: 1000001 }] }),
    problems: [`${RTX}: spec.rules[0].backendRefs[0].port: required`, `${RTX}: spec.rules[0].backendRefs[0].weight: must be <= 1000000`],
  },
  {
    name: 'HTTPRoute bad durations and retry codes',
    value: ROUTE({ timeouts: { request: '10 s', backendRequest: '1d' }, retry: { attempts: -1, backoff: '1.5s', codes: [200, 503] } }),
    problems: [
      `${RTX}: spec.rules[0].timeouts.request: must be a duration like 10s, 500ms or 1h30m`,
      `${RTX}: spec.rules[0].timeouts.backendRequest: must be a duration like 10s, 500ms or 1h30m`,
      `${RTX}: spec.rules[0].retry.attempts: must be >= 0`,
      `${RTX}: spec.rules[0].retry.backoff: must be a duration like 10s, 500ms or 1h30m`,
      `${RTX}: spec.rules[0].retry.codes[0]: must be >= 400`,
    ],
  },
  {
    name: 'HTTPRoute backendRequest longer than request',
    value: ROUTE({ timeouts: { request: '1s', backendRequest: '1m' } }),
    problems: [`${RTX}: spec.rules[0].timeouts.backendRequest: must not exceed timeouts.request (1s)`],
  },
  {
    name: 'HTTPRoute filter without its configuration',
    value: ROUTE({ filters: [{ type: 'RequestHeaderModifier' }, { type: 'Rewrite' }] }),
    problems: [`${RTX}: spec.rules[0].filters[0].requestHeaderModifier: required`, `${RTX}: spec.rules[0].filters[1].type: must be one of RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite, RequestMirror`],
  },
  {
    name: 'HTTPRoute filter with the configuration of another type',
    value: ROUTE({ filters: [{ type: 'URLRewrite', urlRewrite: {}, requestHeaderModifier: { remove: ['x'] } }] }),
    problems: [`${RTX}: spec.rules[0].filters[0].requestHeaderModifier: not allowed with type URLRewrite (set urlRewrite or change type)`],
  },
  {
    name: 'HTTPRoute redirect path without its value',
    value: ROUTE({ filters: [{ type: 'RequestRedirect', requestRedirect: { path: { type: 'ReplaceFullPath' }, statusCode: 200 } }] }),
    problems: [
      `${RTX}: spec.rules[0].filters[0].requestRedirect.path.replaceFullPath: required`,
      `${RTX}: spec.rules[0].filters[0].requestRedirect.statusCode: must be one of 301, 302, 303, 307, 308`,
    ],
  },
  {
    name: 'HTTPRoute: checks beyond the schema wait until the schema passes',
    value: ROUTE({ matches: [{ path: { value: 'api' } }, { path: { type: 'RegularExpression', value: '((' } }, { method: 'FETCH' }] }),
    problems: [
      `${RTX}: spec.rules[0].matches[2].method: must be one of GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH`,
    ],
  },
  {
    name: 'HTTPRoute path checks once the schema passes',
    value: ROUTE({ matches: [{ path: { value: 'api' } }, { path: { type: 'RegularExpression', value: '((' } }] }),
    problems: [
      `${RTX}: spec.rules[0].matches[0].path.value: must start with / for type PathPrefix`,
      `${RTX}: spec.rules[0].matches[1].path.value: invalid regular expression: Unterminated group`,
    ],
  },
  {
    name: 'HTTPRoute bad header name and hostname',
    value: ROUTE({ matches: [{ headers: [{ name: 'x user', value: 'a' }] }] }, { hostnames: ['Web.Shop'] }),
    problems: [
      `${RTX}: spec.hostnames[0]: must be a lowercase DNS name, optionally starting with *. (like web.example.com or *.example.com)`,
      `${RTX}: spec.rules[0].matches[0].headers[0].name: must be an HTTP header name (letters, digits and !#$%&'*+-.^_\`|~)`,
    ],
  },
  {
    name: 'MeshConfig with a namespace',
    value: MC({ name: 'default', namespace: 'default' }),
    problems: ['policies.yaml doc 2 (MeshConfig default): metadata.namespace: not allowed: MeshConfig is cluster-scoped (remove metadata.namespace)'],
  },
  {
    name: 'MeshConfig not named default',
    value: MC({ name: 'mesh' }),
    problems: ['policies.yaml doc 2 (MeshConfig mesh): metadata.name: must be default (there is one MeshConfig per mesh)'],
  },
  {
    name: 'MeshConfig spec out of range',
    value: MC(
      { name: 'default' },
      { trustDomain: 'Cluster Local', outboundTrafficPolicy: { mode: 'DENY' }, defaultMtlsMode: 'OFF', certificateLifetimeSeconds: 31536001 },
    ),
    problems: [
      'policies.yaml doc 2 (MeshConfig default): spec.trustDomain: must be a lowercase DNS name like web.example.com',
      'policies.yaml doc 2 (MeshConfig default): spec.outboundTrafficPolicy.mode: must be one of ALLOW_ANY, REGISTRY_ONLY',
      'policies.yaml doc 2 (MeshConfig default): spec.defaultMtlsMode: must be one of STRICT, PERMISSIVE',
      'policies.yaml doc 2 (MeshConfig default): spec.certificateLifetimeSeconds: must be <= 31536000',
    ],
  },
  {
    name: 'MeshConfig failOpen: not a list',
    value: MC({ name: 'default' }, { failOpen: true }),
    problems: ['policies.yaml doc 2 (MeshConfig default): spec.failOpen: must be array'],
  },
  {
    name: 'MeshConfig failOpen: an entry without its namespace, a bad namespace, a stray field, a selector without matchLabels',
    value: MC({ name: 'default' }, { failOpen: [{ selector: { matchLabels: { app: 'a' } } }, { namespace: 'Prod' }, { namespace: 'a', workload: 'x' }, { namespace: 'b', selector: {} }] }),
    problems: [
      'policies.yaml doc 2 (MeshConfig default): spec.failOpen[0].namespace: required',
      "policies.yaml doc 2 (MeshConfig default): spec.failOpen[1].namespace: must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit",
      'policies.yaml doc 2 (MeshConfig default): spec.failOpen[2].workload: unknown field (expected one of namespace, selector)',
      'policies.yaml doc 2 (MeshConfig default): spec.failOpen[3].selector.matchLabels: required',
    ],
  },
  {
    name: 'MeshConfig failOpen: too many entries',
    value: MC({ name: 'default' }, { failOpen: Array.from({ length: 65 }, (_, i) => ({ namespace: `ns${i}` })) }),
    problems: ['policies.yaml doc 2 (MeshConfig default): spec.failOpen: must list at most 64 entries (select workloads with labels instead)'],
  },
];

t.test('bad documents: every problem, one exact line each, no resource', async (t) => {
  for (const c of BAD) {
    const r = validateResource(doc(c.value));
    t.strictSame(r.problems, c.problems, c.name);
    t.equal(r.resource, undefined, `${c.name}: no resource`);
  }
});

t.test('validateDocuments of a batch with two bad documents throws with both and returns nothing', async (t) => {
  const text = `# four documents; 2 and 4 are wrong
apiVersion: nodemesh.io/v1alpha1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, addresses: [10.96.0.10], ports: [{port: 80}]}
---
apiVersion: nodemesh.io/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: deny-db
  namespace: shop
spec:
  action: DENY
  rules:
  - to:
    - operation:
        ports: ["5432", "postgres"]
---
apiVersion: nodemesh.io/v1alpha1
kind: PeerAuthentication
metadata: {name: strict}
spec: {mtls: {mode: STRICT}}
---
apiVersion: nodemesh.io/v1alpha1
kind: Workload
metadata: {name: db-1}
spec: {node: lab-n1, addresses: [10.1.0.7], readiness: true}
`;
  const docs = parseDocuments(text, 'policies.yaml');
  t.same(
    docs.map((d) => d.index),
    [1, 2, 3, 4],
  );
  let returned: unknown;
  const err = resourceError(() => (returned = validateDocuments(docs)));
  t.equal(returned, undefined, 'nothing returned');
  t.equal(err.code, 'NM_ERR_INVALID_RESOURCE');
  t.strictSame(err.problems, [
    'policies.yaml doc 2 (AuthorizationPolicy shop/deny-db): spec.rules[0].to[0].operation.ports[1]: must be a port number (digits, as a string)',
    'policies.yaml doc 4 (Workload default/db-1): spec.readiness: unknown field (did you mean ready?)',
  ]);
  t.equal(err.message, err.problems.join('\n'));
});

t.test('validateDocuments of a good batch returns every resource in order', async (t) => {
  const docs = parseDocuments(
    `apiVersion: nodemesh.io/v1alpha1
kind: MeshConfig
metadata: {name: default}
---
apiVersion: nodemesh.io/v1alpha1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec: {mtls: {mode: STRICT}}
`,
    'mesh.yaml',
  );
  const rs = validateDocuments(docs);
  t.same(
    rs.map((r) => `${r.kind}/${r.metadata.namespace ?? ''}/${r.metadata.name}`),
    ['MeshConfig//default', 'PeerAuthentication/shop/strict'],
  );
});

t.test('duplicates in one batch are a problem, across files and when the namespace is implied', async (t) => {
  const svc = (ns?: string): unknown => ({
    apiVersion: V,
    kind: 'Service',
    metadata: ns ? { name: 'web', namespace: ns } : { name: 'web' },
    spec: { selector: { app: 'web' }, addresses: ['10.96.0.10'], ports: [{ port: 80 }] },
  });
  const workload = { apiVersion: V, kind: 'Workload', metadata: { name: 'web' }, spec: { node: 'lab-n1', addresses: ['10.1.0.5'] } };
  const err = resourceError(() =>
    validateDocuments([
      { source: 'a.yaml', index: 1, value: svc() },
      { source: 'a.yaml', index: 2, value: svc('shop') },
      { source: 'a.yaml', index: 3, value: workload },
      { source: 'b.yaml', index: 1, value: svc('default') },
    ]),
  );
  t.strictSame(err.problems, [
    'b.yaml doc 1 (Service default/web): metadata.name: duplicate of a.yaml doc 1 (same kind, namespace and name; merge them or rename one)',
  ]);

  const mc = { apiVersion: V, kind: 'MeshConfig', metadata: { name: 'default' } };
  const err2 = resourceError(() => validateDocuments([doc(mc, 'm.yaml', 1), doc(mc, 'm.yaml', 3)]));
  t.strictSame(err2.problems, [
    'm.yaml doc 3 (MeshConfig default): metadata.name: duplicate of m.yaml doc 1 (same kind, namespace and name; merge them or rename one)',
  ]);
});

t.test('MeshConfig with a namespace is rejected in a batch too', async (t) => {
  const err = resourceError(() =>
    validateDocuments(parseDocuments('apiVersion: nodemesh.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: default, namespace: kube-system}\n', 'mesh.yaml')),
  );
  t.strictSame(err.problems, [
    'mesh.yaml doc 1 (MeshConfig default): metadata.namespace: not allowed: MeshConfig is cluster-scoped (remove metadata.namespace)',
  ]);
});

t.test('parseDocuments', async (t) => {
  t.test('skips empty documents and keeps each document number', async (t) => {
    const docs = parseDocuments('---\na: 1\n---\n# only a comment\n---\nb: 2\n---\n', 'x.yaml');
    t.strictSame(docs, [
      { source: 'x.yaml', index: 1, value: { a: 1 } },
      { source: 'x.yaml', index: 3, value: { b: 2 } },
    ]);
    t.strictSame(parseDocuments('', 'empty.yaml'), []);
    t.strictSame(parseDocuments('# nothing\n', 'empty.yaml'), []);
  });

  t.test('a syntax error names the file, document and line', async (t) => {
    const text = 'apiVersion: nodemesh.io/v1alpha1\n---\nkind: Service\nmetadata: {name: web\nspec: {}\n';
    const err = resourceError(() => parseDocuments(text, 'svc.yaml'));
    t.equal(err.code, 'NM_ERR_INVALID_RESOURCE');
    t.ok(err.problems.length >= 1);
    for (const p of err.problems) t.match(p, /^svc\.yaml doc 2: line [4-6]: \S/, p);
  });

  t.test('a duplicate key is a syntax error on its line', async (t) => {
    const err = resourceError(() => parseDocuments('kind: Service\nmetadata:\n  name: a\n  name: b\n', 'dup.yaml'));
    t.strictSame(err.problems, ['dup.yaml doc 1: line 4: Map keys must be unique']);
  });

  t.test('JSON, pretty-printed with tabs, is accepted', async (t) => {
    const json = JSON.stringify(
      { apiVersion: V, kind: 'PeerAuthentication', metadata: { name: 'strict', namespace: 'shop' }, spec: { mtls: { mode: 'STRICT' } } },
      null,
      '\t',
    );
    const docs = parseDocuments(json, 'pa.json');
    t.equal(docs.length, 1);
    const [r] = validateDocuments(docs);
    t.strictSame(r, { apiVersion: V, kind: 'PeerAuthentication', metadata: { name: 'strict', namespace: 'shop' }, spec: { mtls: { mode: 'STRICT' } } });
  });

  t.test('bad JSON names its line', async (t) => {
    const err = resourceError(() => parseDocuments('{\n  "kind": "Service",\n  "metadata": {"name": "web",}\n  "spec": {}\n}\n', 'svc.json'));
    for (const p of err.problems) t.match(p, /^svc\.json doc 1: line [3-4]: \S/, p);
  });

  t.test('YAML 1.2: yes/no and timestamps stay strings', async (t) => {
    const [d] = parseDocuments('a: yes\nb: 2024-05-01\n', 'x.yaml');
    t.strictSame(d?.value, { a: 'yes', b: '2024-05-01' });
  });
});

t.test('schema files: $id is the file name, objects reject unknown fields, defaults match kinds.ts', async (t) => {
  const files = ['metadata.schema.json', ...KIND_NAMES.map((k) => KINDS[k].schema)];
  t.strictSame(fs.readdirSync(SCHEMA_DIR).sort(), [...files].sort(), 'one schema per kind, plus metadata');
  for (const f of files) {
    const schema = JSON.parse(fs.readFileSync(path.join(SCHEMA_DIR, f), 'utf8')) as Record<string, unknown>;
    t.equal(schema.$id, f, `${f}: $id`);
    // Walks the schemas that describe data; if/then/allOf members only add constraints to them.
    const open: string[] = [];
    const walk = (s: unknown, at: string): void => {
      if (typeof s !== 'object' || s === null) return;
      const o = s as Record<string, unknown>;
      if (o.properties !== undefined && o.additionalProperties !== false) open.push(at);
      for (const key of ['properties', 'definitions']) {
        for (const [k, v] of Object.entries((o[key] as Record<string, unknown> | undefined) ?? {})) walk(v, `${at}/${key}/${k}`);
      }
      walk(o.items, `${at}/items`);
      walk(o.additionalProperties, `${at}/additionalProperties`);
    };
    walk(schema, f);
    t.strictSame(open, [], `${f}: every object schema has additionalProperties: false`);
  }
});

t.test('Gateway API durations', async (t) => {
  const cases: [string, number | undefined][] = [
    ['10s', 10_000],
    ['500ms', 500],
    ['1h30m', 5_400_000],
    ['1m1s1ms', 61_001],
    ['0s', 0],
    ['1d', undefined],
    ['1.5s', undefined],
    ['10', undefined],
    ['1h1m1s1ms1h', undefined],
  ];
  for (const [text, ms] of cases) t.equal(parseDurationMs(text), ms, text);
});

t.test('schema files: every string, list and map has a maximum size', async (t) => {
  const files = ['metadata.schema.json', ...KIND_NAMES.map((k) => KINDS[k].schema)];
  // A pattern with no *, + or {n,} bounds the length by itself.
  const boundedPattern = (p: unknown): boolean => typeof p === 'string' && !/[*+]|\{\d+,\}/.test(p.replace(/\\./g, ''));
  for (const f of files) {
    const unbounded: string[] = [];
    const walk = (s: unknown, at: string): void => {
      if (typeof s !== 'object' || s === null) return;
      if (Array.isArray(s)) return s.forEach((x, i) => walk(x, `${at}/${i}`));
      const o = s as Record<string, unknown>;
      if (o.type === 'string' && o.maxLength === undefined && !boundedPattern(o.pattern)) unbounded.push(`${at} (string without maxLength)`);
      if (o.type === 'array' && o.maxItems === undefined) unbounded.push(`${at} (array without maxItems)`);
      if (typeof o.additionalProperties === 'object' && o.maxProperties === undefined) unbounded.push(`${at} (map without maxProperties)`);
      for (const [k, v] of Object.entries(o)) if (k !== 'default' && k !== 'x-messages') walk(v, `${at}/${k}`);
    };
    walk(JSON.parse(fs.readFileSync(path.join(SCHEMA_DIR, f), 'utf8')), f);
    t.strictSame(unbounded, [], `${f}: bounded`);
  }
});

t.test('well-formed Unicode passes the shape check: surrogate pairs, any script', async (t) => {
  const r = validateResource(doc(WL({}, { name: 'web-1', annotations: { note: 'ok \ud83d\ude00 日本語' } })));
  t.strictSame(r.problems, []);
  t.equal(r.resource?.metadata.annotations?.note, 'ok \ud83d\ude00 日本語');
});

t.test('parseDocuments: nesting and document count are checked on the tokens, before composing', async (t) => {
  const deep = `a: 1\n---\nkind: Service\nspec: ${'['.repeat(100_000)}${']'.repeat(100_000)}\n`;
  t.throws(() => parseDocuments(deep, 'deep.yaml'), {
    code: 'NM_ERR_INVALID_RESOURCE',
    message: 'deep.yaml doc 2: line 4: nested deeper than 32 levels, the limit (no nodemesh resource needs more than about 10: look for unbalanced brackets or a generated document)',
  });
  const block = Array.from({ length: 40 }, (_, i) => `${' '.repeat(i)}a:`).join('\n') + ' 1\n';
  t.throws(() => parseDocuments(block, 'block.yaml'), { message: /^block\.yaml doc 1: line 33: nested deeper than 32 levels/ }, 'block nesting too');
  const ok = Array.from({ length: 31 }, (_, i) => `${' '.repeat(i)}a:`).join('\n') + ' 1\n';
  t.equal(parseDocuments(ok, 'ok.yaml').length, 1, '32 levels are fine');
  // Aliases nest what the tokens did not.
  const aliased = `x: &x ${'['.repeat(20)}${']'.repeat(20)}\ny: ${'['.repeat(20)}*x${']'.repeat(20)}\n`;
  t.throws(() => parseDocuments(aliased, 'alias.yaml'), { message: /^alias\.yaml doc 1 \(kind\?\): y(\[0\]){31}: nested deeper than 32 levels/ });
  t.throws(() => parseDocuments('---\n'.repeat(1001) + 'a: 1\n', 'many.yaml'), {
    message: 'many.yaml: more than 1000 documents, the limit per command (split the file and apply the parts one by one)',
  });
  t.equal(parseDocuments('---\na: 1\n'.repeat(1000), 'max.yaml').length, 1000, '1000 documents are fine');
  t.throws(() => parseDocuments('metadata: {name: "web\\ud800"}\n', 'lone.yaml'), { message: /^lone\.yaml doc 1 \(kind\? default\/"web\\ud800"\): metadata\.name: must be well-formed Unicode: lone surrogate \\ud800 at character 4/ });
});
