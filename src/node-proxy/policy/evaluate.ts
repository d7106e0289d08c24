/**
 * The authorization decision for one inbound connection (and, once the port
 * speaks HTTP, one request), with Istio's AuthorizationPolicy semantics:
 *
 * - Policies apply to a destination when they live in its namespace and have
 *   no selector or one its labels satisfy, or live in the root namespace
 *   (mesh-wide; a selector there still has to match).
 * - AUDIT policies never decide; the ones that match are reported. DENY comes
 *   before ALLOW: any matching DENY denies. If no ALLOW policy applies the
 *   connection is allowed; if some apply, one of their rules must match.
 * - A policy without rules matches nothing (an ALLOW one is "allow nothing");
 *   a rule `{}` matches everything.
 * - In a rule, from / to / when are ANDed; the entries of from (and of to) are
 *   ORed; the fields of one entry are ANDed; the values of one field are ORed;
 *   `notX` matches when the value is absent or matches none of its patterns.
 *   An empty list is the same as an absent one (protobuf, as Istio reads it).
 * - Principals and namespaces come from the peer's SPIFFE ID, compared without
 *   `spiffe://` (policies may use either form). A plaintext source has neither:
 *   it matches no `principals`/`namespaces` pattern (not even `*`) and every
 *   `notPrincipals`/`notNamespaces`. `facts.source.namespace` is not trusted
 *   for this: like Istio, only the authenticated identity names a namespace.
 * - Without `facts.request` (plain TCP), HTTP-only attributes (hosts, methods,
 *   paths, requestPrincipals and their not-forms; `request.*` conditions) make
 *   an ALLOW rule match nothing, anywhere in the rule, and are ignored in DENY
 *   and AUDIT rules (which therefore match more): Istio's `checkError` rule.
 * - Deviation: condition keys this proxy has no facts for (`connection.sni`,
 *   `experimental.envoy.filters.*`) and unknown keys make the rule match
 *   nothing, whatever the action; Istio skips rules with unknown keys the same
 *   way but would evaluate `connection.sni`. Malformed CIDRs and ports (the
 *   schema rejects them) match nothing.
 * - JWT facts do not exist yet: with a request, `requestPrincipals` and
 *   `request.auth.*` see an absent value.
 *
 * Among several matching DENY (or ALLOW) policies, the reported one is the
 * first in this order: root namespace first (mesh-wide guardrails), then by
 * name.
 *
 * Pure: no I/O; never throws on a validated policy.
 */
import type { AuthorizationPolicy, AuthorizationRule, StringMatchLists } from '../../api/kinds';
import { ROOT_NAMESPACE } from '../../api/kinds';
import { labelSelectorMatches, pairsMatch, selectorPairs } from '../../api/selectors';
import { cidrContains, parseCidr, parseIp, type Cidr, type Ip } from '../../api/address';

export { ROOT_NAMESPACE };

export interface ConnectionFacts {
  source: {
    /** SPIFFE ID `spiffe://td/ns/X/sa/Y`; absent when unknown (plaintext from outside the mesh). */
    principal?: string;
    /** Informational; authorization derives the namespace from `principal`. */
    namespace?: string;
    ip: string;
  };
  destination: { namespace: string; labels: Record<string, string>; ip: string; port: number };
  /** L7 facts when the port speaks HTTP; absent for TCP. */
  request?: { method: string; path: string; host: string; headers: Record<string, string> };
}

export type Verdict = 'allowed' | 'denied';

export interface Decision {
  allowed: boolean;
  /**
   * 'explicit-deny' | 'allowed-by-policy' | 'no-allow-policy' (no ALLOW policy selects the workload: allowed)
   * | 'not-allowed' (ALLOW policies select it, none matched)
   */
  reason: 'explicit-deny' | 'allowed-by-policy' | 'no-allow-policy' | 'not-allowed';
  /** ns/name of the deciding policy (the DENY that matched, or the ALLOW that matched); absent for no-allow-policy / not-allowed. */
  policy?: string;
  /** ns/name of AUDIT policies that matched (logged by the caller, never change the verdict). */
  audit: string[];
  /** For not-allowed: the ALLOW policies that were considered. */
  considered?: string[];
}

/** A compiled form for the hot path: compile once per config version, evaluate per connection without re-parsing. */
export interface CompiledPolicySet {
  evaluate(facts: ConnectionFacts): Decision;
  readonly size: number;
}

/** Policies that apply to the destination: same namespace (selector matching its labels, or no selector) or the root namespace. */
export function applicablePolicies(policies: Iterable<AuthorizationPolicy>, dest: { namespace: string; labels: Record<string, string> }): AuthorizationPolicy[] {
  const out: AuthorizationPolicy[] = [];
  for (const p of policies) {
    const ns = p.metadata.namespace;
    if (ns !== dest.namespace && ns !== ROOT_NAMESPACE) continue;
    if (labelSelectorMatches(p.spec.selector?.matchLabels, dest.labels)) out.push(p);
  }
  return out;
}

/** Decides one connection; compiles the applicable policies on every call, so prefer compilePolicies on the hot path. */
export function evaluate(facts: ConnectionFacts, policies: Iterable<AuthorizationPolicy>): Decision {
  const compiled = applicablePolicies(policies, facts.destination).map(compilePolicy).sort(byOrder);
  return decide([split(compiled)], facts.destination.labels, new Conn(facts));
}

export function compilePolicies(policies: Iterable<AuthorizationPolicy>): CompiledPolicySet {
  const byNamespace = new Map<string, CompiledPolicy[]>();
  let size = 0;
  for (const p of policies) {
    const ns = p.metadata.namespace;
    if (ns === undefined) continue;
    let list = byNamespace.get(ns);
    if (!list) byNamespace.set(ns, (list = []));
    list.push(compilePolicy(p));
    size++;
  }
  const buckets = new Map<string, Bucket>();
  for (const [ns, list] of byNamespace) buckets.set(ns, split(list.sort(byOrder)));
  const root = buckets.get(ROOT_NAMESPACE);
  return {
    size,
    evaluate(facts: ConnectionFacts): Decision {
      const dest = facts.destination;
      const local = dest.namespace === ROOT_NAMESPACE ? undefined : buckets.get(dest.namespace);
      const groups = root ? (local ? [root, local] : [root]) : local ? [local] : NO_BUCKETS;
      return decide(groups, dest.labels, new Conn(facts));
    },
  };
}

// --- decision ---

interface CompiledPolicy {
  /** ns/name */
  key: string;
  isRoot: boolean;
  action: 'ALLOW' | 'DENY' | 'AUDIT';
  selector: readonly (readonly [string, string])[];
  rules: CompiledRule[];
}

/** One namespace's policies by action, each list in decision order. */
interface Bucket {
  deny: CompiledPolicy[];
  allow: CompiledPolicy[];
  audit: CompiledPolicy[];
}

const NO_BUCKETS: readonly Bucket[] = [];

function byOrder(a: CompiledPolicy, b: CompiledPolicy): number {
  if (a.isRoot !== b.isRoot) return a.isRoot ? -1 : 1;
  return a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
}

function split(sorted: CompiledPolicy[]): Bucket {
  return {
    deny: sorted.filter((p) => p.action === 'DENY'),
    allow: sorted.filter((p) => p.action === 'ALLOW'),
    audit: sorted.filter((p) => p.action === 'AUDIT'),
  };
}

const selects = pairsMatch;

function decide(groups: readonly Bucket[], labels: Record<string, string>, c: Conn): Decision {
  const audit: string[] = [];
  for (const g of groups) for (const p of g.audit) if (selects(p.selector, labels) && policyMatches(p, c)) audit.push(p.key);
  for (const g of groups) {
    for (const p of g.deny) if (selects(p.selector, labels) && policyMatches(p, c)) return { allowed: false, reason: 'explicit-deny', policy: p.key, audit };
  }
  let considered: string[] | undefined;
  for (const g of groups) {
    for (const p of g.allow) {
      if (!selects(p.selector, labels)) continue;
      (considered ??= []).push(p.key);
      if (policyMatches(p, c)) return { allowed: true, reason: 'allowed-by-policy', policy: p.key, audit };
    }
  }
  if (!considered) return { allowed: true, reason: 'no-allow-policy', audit };
  return { allowed: false, reason: 'not-allowed', audit, considered };
}

function policyMatches(p: CompiledPolicy, c: Conn): boolean {
  const strictHttp = p.action === 'ALLOW';
  for (const r of p.rules) if (ruleMatches(r, c, strictHttp)) return true;
  return false;
}

function ruleMatches(r: CompiledRule, c: Conn, strictHttp: boolean): boolean {
  if (r.never) return false;
  if (r.http && strictHttp && !c.isHttp) return false;
  return anyEntry(r.from, c) && anyEntry(r.to, c) && allChecks(r.when, c);
}

function anyEntry(entries: readonly Check[][], c: Conn): boolean {
  if (entries.length === 0) return true;
  for (const e of entries) if (allChecks(e, c)) return true;
  return false;
}

function allChecks(checks: readonly Check[], c: Conn): boolean {
  for (const k of checks) {
    // Only DENY/AUDIT rules reach an HTTP check on TCP (ALLOW ones stop in ruleMatches): ignore it.
    if (k.http && !c.isHttp) continue;
    if (!k.test(c)) return false;
  }
  return true;
}

// --- compilation ---

interface Check {
  /** Needs facts.request. */
  http: boolean;
  test(c: Conn): boolean;
}

interface CompiledRule {
  /** Names something this proxy cannot evaluate: matches nothing. */
  never: boolean;
  /** Has an HTTP-only check somewhere. */
  http: boolean;
  from: Check[][];
  to: Check[][];
  when: Check[];
}

function compilePolicy(p: AuthorizationPolicy): CompiledPolicy {
  const ns = p.metadata.namespace ?? '';
  return {
    key: `${ns}/${p.metadata.name}`,
    isRoot: ns === ROOT_NAMESPACE,
    action: p.spec.action ?? 'ALLOW',
    selector: selectorPairs(p.spec.selector?.matchLabels),
    rules: (p.spec.rules ?? []).map(compileRule),
  };
}

function compileRule(rule: AuthorizationRule): CompiledRule {
  const out: CompiledRule = { never: false, http: false, from: [], to: [], when: [] };
  const add = (into: Check[], k: Check | undefined | typeof NEVER): void => {
    if (k === NEVER) out.never = true;
    else if (k) {
      into.push(k);
      if (k.http) out.http = true;
    }
  };
  for (const f of rule.from ?? []) {
    const checks: Check[] = [];
    for (const [field, values] of Object.entries(f.source ?? {})) add(checks, sourceCheck(field, values));
    out.from.push(checks);
  }
  for (const t of rule.to ?? []) {
    const checks: Check[] = [];
    for (const [field, values] of Object.entries(t.operation ?? {})) add(checks, operationCheck(field, values));
    out.to.push(checks);
  }
  for (const w of rule.when ?? []) add(out.when, conditionCheck(w.key, w.values, w.notValues));
  return out;
}

const NEVER = Symbol('never');
type Matcher<V> = (v: V) => boolean;
type Field = StringMatchLists[string];

function sourceCheck(field: string, values: Field): Check | undefined | typeof NEVER {
  const neg = field.startsWith('not');
  const list = values ?? [];
  switch (field) {
    case 'principals':
    case 'notPrincipals':
      return check(false, getPrincipal, list.map(principalMatcher), neg);
    case 'namespaces':
    case 'notNamespaces':
      return check(false, getNamespace, list.map(namespaceMatcher), neg);
    case 'ipBlocks':
    case 'notIpBlocks':
      return check(false, getSourceIp, list.length ? [cidrMatcher(list)] : [], neg);
    case 'requestPrincipals':
    case 'notRequestPrincipals':
      return check(true, getNothing, list.map((p) => stringMatcher(p)), neg);
    default:
      return NEVER;
  }
}

function operationCheck(field: string, values: Field): Check | undefined | typeof NEVER {
  const neg = field.startsWith('not');
  const list = values ?? [];
  switch (field) {
    case 'ports':
    case 'notPorts':
      return check(false, getPort, list.map(portMatcher), neg);
    case 'hosts':
    case 'notHosts':
      return check(true, getHost, list.map((p) => stringMatcher(p.toLowerCase())), neg);
    case 'methods':
    case 'notMethods':
      return check(true, getMethod, list.map((p) => stringMatcher(p)), neg);
    case 'paths':
    case 'notPaths':
      return check(true, getPath, list.map(pathMatcher), neg);
    default:
      return NEVER;
  }
}

const HEADER_KEY = /^request\.headers\[([^\]]+)\]$/;
const CLAIM_KEY = /^request\.auth\.claims(\[[^\]]+\])+$/;

function conditionCheck(key: string, values: string[] | undefined, notValues: string[] | undefined): Check | undefined | typeof NEVER {
  const pos = values ?? [];
  const neg = notValues ?? [];
  const ips = (get: (c: Conn) => Ip | undefined): Check | undefined =>
    checkBoth(false, get, pos.length ? [cidrMatcher(pos)] : [], neg.length ? [cidrMatcher(neg)] : []);
  const strings = (http: boolean, get: (c: Conn) => string | undefined, m: (p: string) => Matcher<string>): Check | undefined =>
    checkBoth(http, get, pos.map(m), neg.map(m));
  switch (key) {
    case 'source.ip':
    // No X-Forwarded-For is trusted, so the original client is the peer.
    case 'remote.ip':
      return ips(getSourceIp);
    case 'destination.ip':
      return ips(getDestIp);
    case 'destination.port':
      return checkBoth(false, getPort, pos.map(portMatcher), neg.map(portMatcher));
    case 'source.namespace':
      return strings(false, getNamespace, namespaceMatcher);
    case 'source.principal':
      return strings(false, getPrincipal, principalMatcher);
    case 'request.auth.principal':
    case 'request.auth.audiences':
    case 'request.auth.presenter':
      return strings(true, getNothing, (p) => stringMatcher(p));
  }
  if (CLAIM_KEY.test(key)) return strings(true, getNothing, (p) => stringMatcher(p));
  const header = HEADER_KEY.exec(key)?.[1];
  if (header !== undefined) {
    const name = header.toLowerCase();
    return strings(true, (c) => c.header(name), (p) => stringMatcher(p, true));
  }
  return NEVER;
}

function check<V>(http: boolean, get: (c: Conn) => V | undefined, matchers: Matcher<V>[], negate: boolean): Check | undefined {
  return negate ? checkBoth(http, get, [], matchers) : checkBoth(http, get, matchers, []);
}

/** Both lists empty: no constraint (Istio skips the key). */
function checkBoth<V>(http: boolean, get: (c: Conn) => V | undefined, pos: Matcher<V>[], neg: Matcher<V>[]): Check | undefined {
  if (pos.length === 0 && neg.length === 0) return undefined;
  return {
    http,
    test(c: Conn): boolean {
      const v = get(c);
      if (pos.length && (v === undefined || !anyMatch(pos, v))) return false;
      if (neg.length && v !== undefined && anyMatch(neg, v)) return false;
      return true;
    },
  };
}

function anyMatch<V>(ms: readonly Matcher<V>[], v: V): boolean {
  for (const m of ms) if (m(v)) return true;
  return false;
}

// --- matchers ---

/**
 * Istio's string match: `*` any non-empty value (a present header, when
 * `presence`), `*abc` suffix, `abc*` prefix, else exact.
 */
function stringMatcher(p: string, presence = false): Matcher<string> {
  if (p === '*') return presence ? () => true : (v) => v.length > 0;
  if (p.startsWith('*')) {
    const suffix = p.slice(1);
    return (v) => v.endsWith(suffix);
  }
  if (p.endsWith('*')) {
    const prefix = p.slice(0, -1);
    return (v) => v.startsWith(prefix);
  }
  return (v) => v === p;
}

const SPIFFE = 'spiffe://';

function stripSpiffe(s: string): string {
  return s.startsWith(SPIFFE) ? s.slice(SPIFFE.length) : s;
}

function principalMatcher(p: string): Matcher<string> {
  return stringMatcher(stripSpiffe(p));
}

/** Istio turns every `*` of a namespace pattern into `.*` (a regex over the principal). */
function namespaceMatcher(p: string): Matcher<string> {
  if (!p.includes('*')) return (v) => v === p;
  const re = new RegExp(`^${p.split('*').map(escapeRegExp).join('.*')}$`);
  return (v) => re.test(v);
}

/** Exact, `*` / prefix / suffix, or Envoy URI templates: `{*}` one segment, `{**}` the rest. */
function pathMatcher(p: string): Matcher<string> {
  if (!p.includes('{*}') && !p.includes('{**}')) return stringMatcher(p);
  const re = new RegExp(
    `^${p
      .split(/(\{\*\*\}|\{\*\})/)
      .map((part) => (part === '{**}' ? '.*' : part === '{*}' ? '[^/]+' : escapeRegExp(part)))
      .join('')}$`,
  );
  return (v) => re.test(v);
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function portMatcher(p: string): Matcher<number> {
  const n = /^[0-9]{1,5}$/.test(p) ? Number(p) : NaN;
  return (v) => v === n;
}

function cidrMatcher(blocks: readonly string[]): Matcher<Ip> {
  const cidrs = blocks.map(parseCidr).filter((c): c is Cidr => c !== undefined);
  return (ip) => {
    for (const c of cidrs) if (cidrContains(c, ip)) return true;
    return false;
  };
}

// --- per-connection facts, derived lazily and at most once ---

const UNSET = Symbol('unset');
const NS_IN_ID = /\/ns\/([^/]+)\//;

class Conn {
  readonly isHttp: boolean;
  readonly port: number;
  readonly #facts: ConnectionFacts;
  #principal: string | undefined | typeof UNSET = UNSET;
  #namespace: string | undefined | typeof UNSET = UNSET;
  #sourceIp: Ip | undefined | typeof UNSET = UNSET;
  #destIp: Ip | undefined | typeof UNSET = UNSET;
  #path: string | undefined | typeof UNSET = UNSET;
  #host: string | undefined | typeof UNSET = UNSET;

  constructor(facts: ConnectionFacts) {
    this.#facts = facts;
    this.isHttp = facts.request !== undefined;
    this.port = facts.destination.port;
  }

  get principal(): string | undefined {
    if (this.#principal === UNSET) {
      const p = this.#facts.source.principal;
      this.#principal = p ? stripSpiffe(p) || undefined : undefined;
    }
    return this.#principal;
  }

  get namespace(): string | undefined {
    if (this.#namespace === UNSET) {
      const p = this.principal;
      this.#namespace = p === undefined ? undefined : NS_IN_ID.exec(p)?.[1];
    }
    return this.#namespace;
  }

  get sourceIp(): Ip | undefined {
    if (this.#sourceIp === UNSET) this.#sourceIp = parseIp(this.#facts.source.ip);
    return this.#sourceIp;
  }

  get destIp(): Ip | undefined {
    if (this.#destIp === UNSET) this.#destIp = parseIp(this.#facts.destination.ip);
    return this.#destIp;
  }

  /** Without query and fragment, as Envoy's url_path matcher sees it. */
  get path(): string | undefined {
    if (this.#path === UNSET) {
      const p = this.#facts.request?.path;
      this.#path = p === undefined ? undefined : p.split(/[?#]/, 1)[0]!;
    }
    return this.#path;
  }

  /** Lowercased: hosts compare case-insensitively (RFC 4343; Istio CVE-2021-39155). */
  get host(): string | undefined {
    if (this.#host === UNSET) this.#host = this.#facts.request?.host.toLowerCase();
    return this.#host;
  }

  get method(): string | undefined {
    return this.#facts.request?.method;
  }

  /** `lowerName` lowercased; header names compare case-insensitively. */
  header(lowerName: string): string | undefined {
    const headers = this.#facts.request?.headers;
    if (!headers) return undefined;
    const v = headers[lowerName];
    if (typeof v === 'string') return v;
    for (const k of Object.keys(headers)) if (k.toLowerCase() === lowerName) return headers[k];
    return undefined;
  }
}

const getPrincipal = (c: Conn): string | undefined => c.principal;
const getNamespace = (c: Conn): string | undefined => c.namespace;
const getSourceIp = (c: Conn): Ip | undefined => c.sourceIp;
const getDestIp = (c: Conn): Ip | undefined => c.destIp;
const getPort = (c: Conn): number => c.port;
const getHost = (c: Conn): string | undefined => c.host;
const getMethod = (c: Conn): string | undefined => c.method;
const getPath = (c: Conn): string | undefined => c.path;
/** For facts not collected yet (JWT): always absent. */
const getNothing = (): string | undefined => undefined;
