/**
 * The edge where resource documents enter nodemesh (see docs/architecture.md,
 * 'Resources'): parse YAML or JSON, check each document against its kind's
 * JSON Schema, fill defaults, and report every problem with the document and
 * the path that caused it.
 * Everything past this point trusts the types in kinds.ts.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';

import Ajv, { type ErrorObject, type ValidateFunction } from 'ajv';
import { Composer, LineCounter, Parser, type CST } from 'yaml';

import { MeshError } from '../errors';
import { PACKAGE_ROOT } from '../paths';
import { parseCidr } from './address';
import { DURATION_RE, parseDurationMs } from './duration';
import {
  API_VERSION,
  KIND_NAMES,
  KINDS,
  resourceKey,
  type AuthorizationPolicySpec,
  type KindInfo,
  type KindName,
  type Resource,
  type ServiceSpec,
  type WorkloadSpec,
} from './kinds';
import { formatBytes, isWellFormed, LIMITS, quote, shown } from './limits';

export { parseDurationMs };

/** One document of an input file, before validation. */
export interface SourceDoc {
  /** Where it came from (a file name, `-` for stdin, `request`...). */
  source: string;
  /** 1-based document number in the file. */
  index: number;
  value: unknown;
}

/** Input that is not a valid resource; `problems` holds one line per problem. */
export class ResourceError extends MeshError {
  readonly problems: string[];

  constructor(problems: string[]) {
    super('NM_ERR_INVALID_RESOURCE', problems.join('\n'));
    this.problems = [...problems];
  }
}

/** dist/ holds no copies of the JSON files, so they are read from the source tree. */
export const SCHEMA_DIR = path.join(PACKAGE_ROOT, 'src', 'api', 'schemas');

// --- formats (ajv strict mode rejects formats it does not know; no ajv-formats dependency) ---

const DATE_TIME_RE = /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;

function isIp(s: string): boolean {
  return net.isIP(s) !== 0;
}

/**
 * An address or a block: `10.0.0.1`, `10.0.0.0/8`, `fd00::/64`, in the
 * strict spelling node:net accepts, and one the proxy can match (its parser,
 * src/api/address.ts, decides: an IPv4-mapped block shorter than /96 spans
 * more than IPv4 and is refused here rather than matching nothing there).
 */
export function isCidr(s: string): boolean {
  const slash = s.indexOf('/');
  if (slash < 0) return isIp(s) && parseCidr(s) !== undefined;
  const family = net.isIP(s.slice(0, slash));
  const len = s.slice(slash + 1);
  if (family === 0 || !/^(0|[1-9][0-9]{0,2})$/.test(len)) return false;
  return Number(len) <= (family === 4 ? 32 : 128) && parseCidr(s) !== undefined;
}

const FORMAT_MESSAGES: Record<string, string> = {
  ip: 'must be an IPv4 or IPv6 address',
  cidr: 'must be an IP address or CIDR block (like 10.0.0.0/8 or fd00::/64)',
  duration: 'must be a duration like 10s, 500ms or 1h30m',
  'date-time': 'must be an RFC 3339 date-time like 2024-05-01T12:00:00Z',
};

// --- schemas, compiled once ---

function loadSchema(file: string): Record<string, unknown> {
  const p = path.join(SCHEMA_DIR, file);
  try {
    return JSON.parse(fs.readFileSync(p, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new MeshError('NM_ERR_SCHEMA', `api: cannot load schema ${p}: ${(err as Error).message} (reinstall nodemesh: the schemas ship in src/api/schemas)`, {
      cause: err,
    });
  }
}

function compileValidators(): Record<KindName, ValidateFunction> {
  // verbose puts parentSchema on each error: the source of x-messages and of allowed field names.
  const ajv = new Ajv({ strict: true, allErrors: true, useDefaults: true, verbose: true });
  ajv.addKeyword({ keyword: 'x-messages', schemaType: 'object' });
  ajv.addFormat('ip', isIp);
  ajv.addFormat('cidr', isCidr);
  ajv.addFormat('duration', DURATION_RE);
  ajv.addFormat('date-time', (s: string) => DATE_TIME_RE.test(s) && !Number.isNaN(Date.parse(s)));
  ajv.addSchema(loadSchema('metadata.schema.json'));
  const out: Partial<Record<KindName, ValidateFunction>> = {};
  for (const kind of KIND_NAMES) {
    ajv.addSchema(loadSchema(KINDS[kind].schema));
  }
  for (const kind of KIND_NAMES) {
    const v = ajv.getSchema(KINDS[kind].schema);
    if (!v) throw new MeshError('NM_ERR_SCHEMA', `api: schema ${KINDS[kind].schema} has no matching $id (the $id must be the file name)`);
    out[kind] = v;
  }
  return out as Record<KindName, ValidateFunction>;
}

// Compiled on first use: a process that only parses durations (the node proxy) does not build them.
let validators: Record<KindName, ValidateFunction> | undefined;

// --- problem lines ---

interface Problem {
  /** Dotted path into the document, '' for the document itself. */
  path: string;
  message: string;
}

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function childPath(parent: string, key: string | number): string {
  if (typeof key === 'number') return `${parent}[${key}]`;
  if (/^[A-Za-z_][A-Za-z0-9_-]*$/.test(key)) return parent ? `${parent}.${key}` : key;
  return `${parent}[${quote(key)}]`;
}

/** `/spec/rules/0/to` → `spec.rules[0].to`, walking the data so a map key "0" stays a key. */
function pointerToPath(pointer: string, root: unknown): string {
  if (!pointer) return '';
  let out = '';
  let cur: unknown = root;
  for (const raw of pointer.split('/').slice(1)) {
    const seg = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (Array.isArray(cur)) {
      out = childPath(out, Number(seg));
      cur = cur[Number(seg)];
    } else {
      out = childPath(out, seg);
      cur = isObj(cur) ? cur[seg] : undefined;
    }
  }
  return out;
}

function editDistance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0]!;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const up = prev[j]!;
      prev[j] = Math.min(up + 1, prev[j - 1]! + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = up;
    }
  }
  return prev[b.length]!;
}

/** The allowed name a typo most likely meant, if one is close enough to be a good guess. */
function closest(word: string, candidates: readonly string[]): string | undefined {
  // Edit distance is quadratic: a word this long is no typo of a field name.
  if (word.length > LIMITS.maxQuotedChars) return undefined;
  let best: string | undefined;
  let bestD = Infinity;
  for (const c of candidates) {
    const [w, l] = [word.toLowerCase(), c.toLowerCase()];
    // A name sharing all but the last letter of the shorter one (readiness, ready) is as good a guess as a typo.
    let common = 0;
    while (common < w.length && w[common] === l[common]) common++;
    const affix = common >= 4 && common >= Math.min(w.length, l.length) - 1;
    const d = w === l ? 0.5 : affix ? 1.5 : editDistance(word, c);
    if (d < bestD) [best, bestD] = [c, d];
  }
  return bestD <= 2 && bestD < word.length ? best : undefined;
}

function show(v: unknown): string {
  return typeof v === 'string' ? (v === '' ? '""' : v) : JSON.stringify(v);
}

function plural(n: number, one: string, many: string): string {
  return `${n} ${n === 1 ? one : many}`;
}

function describeAjvError(e: ErrorObject, root: unknown): Problem | undefined {
  const p = e.params as Record<string, unknown>;
  const at = pointerToPath(e.instancePath, root);
  let message: string;
  switch (e.keyword) {
    case 'if':
    case 'propertyNames':
      // Noise: the failing "then" or key rule reports the useful error itself.
      return undefined;
    case 'required':
      return { path: childPath(at, String(p.missingProperty)), message: 'required' };
    case 'additionalProperties': {
      const field = String(p.additionalProperty);
      const props = isObj(e.parentSchema) && isObj(e.parentSchema.properties) ? Object.keys(e.parentSchema.properties) : [];
      const guess = closest(field, props);
      const hint = guess ? ` (did you mean ${guess}?)` : props.length ? ` (expected one of ${props.join(', ')})` : '';
      return { path: childPath(at, field), message: `unknown field${hint}` };
    }
    case 'enum':
      message = `must be one of ${(p.allowedValues as unknown[]).map(show).join(', ')}`;
      break;
    case 'const':
      message = `must be ${show(p.allowedValue)}`;
      break;
    case 'type':
      message = `must be ${String(p.type)}`;
      break;
    case 'pattern':
      message = `must match "${String(p.pattern)}"`;
      break;
    case 'format':
      message = FORMAT_MESSAGES[String(p.format)] ?? `must be a valid ${String(p.format)}`;
      break;
    case 'minItems':
      message = `must have at least ${plural(Number(p.limit), 'item', 'items')}`;
      break;
    case 'maxItems':
      message = `must have at most ${plural(Number(p.limit), 'item', 'items')}`;
      break;
    case 'minLength':
      message = Number(p.limit) === 1 ? 'must not be empty' : `must be at least ${Number(p.limit)} characters`;
      break;
    case 'maxLength':
      message = `must be at most ${Number(p.limit)} characters`;
      break;
    case 'minProperties':
      message = `must have at least ${plural(Number(p.limit), 'entry', 'entries')}`;
      break;
    case 'uniqueItems':
      message = `must not repeat an item (items ${Math.min(Number(p.i), Number(p.j))} and ${Math.max(Number(p.i), Number(p.j))} are equal)`;
      break;
    case 'not':
    case 'false schema':
      message = 'not allowed';
      break;
    default:
      message = e.message ?? 'is invalid';
  }
  const custom = isObj(e.parentSchema) ? e.parentSchema['x-messages'] : undefined;
  if (isObj(custom) && typeof custom[e.keyword] === 'string') message = custom[e.keyword] as string;
  if (e.propertyName !== undefined) message = `key ${quote(e.propertyName)}: ${message}`;
  return { path: at, message };
}

// --- the shape every document has before any schema looks at it ---

/** Problems one document may report from the walk below before it stops looking. */
const MAX_SHAPE_PROBLEMS = 10;

interface Visit {
  value: unknown;
  depth: number;
  parent?: Visit;
  key?: string | number;
}

function visitPath(v: Visit): string {
  const keys: (string | number)[] = [];
  for (let at: Visit | undefined = v; at?.parent; at = at.parent) keys.push(at.key!);
  return keys.reverse().reduce<string>((p, k) => childPath(p, k), '');
}

function loneSurrogate(s: string): string {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) i++;
    else if (c >= 0xd800 && c <= 0xdfff) return `lone surrogate \\u${c.toString(16)} at character ${i + 1}`;
  }
  return 'lone surrogate';
}

const NOT_UNICODE = 'must be well-formed Unicode';
const UNICODE_FIX = "(save the file as UTF-8; a \\uD800-\\uDFFF escape must be half of a pair)";

/**
 * What JSON Schema cannot say, checked on the raw value with an explicit
 * stack (a 10,000-level document must get this error, not a stack overflow):
 * nesting at most LIMITS.maxNestingDepth, well-formed Unicode in every string
 * and key, and plain data only (mappings, lists, strings, finite numbers,
 * booleans, null).
 */
export function shapeProblems(root: unknown, maxDepth: number = LIMITS.maxNestingDepth): Problem[] {
  const out: Problem[] = [];
  const stack: Visit[] = [{ value: root, depth: 1 }];
  let deepReported = false;
  while (stack.length > 0 && out.length < MAX_SHAPE_PROBLEMS) {
    const v = stack.pop()!;
    const x = v.value;
    if (typeof x === 'string') {
      if (!isWellFormed(x)) out.push({ path: visitPath(v), message: `${NOT_UNICODE}: ${loneSurrogate(x)} ${UNICODE_FIX}` });
      continue;
    }
    if (x === null || typeof x === 'boolean') continue;
    if (typeof x === 'number') {
      if (!Number.isFinite(x)) out.push({ path: visitPath(v), message: 'must be a finite number' });
      continue;
    }
    const isArray = Array.isArray(x);
    if (typeof x !== 'object' || (!isArray && Object.getPrototypeOf(x) !== Object.prototype && Object.getPrototypeOf(x) !== null)) {
      const what = typeof x === 'object' ? `a ${(x as object).constructor?.name ?? 'class'} instance` : `a ${typeof x}`;
      out.push({ path: visitPath(v), message: `must be plain data (a mapping, list, string, number, boolean or null), not ${what}` });
      continue;
    }
    if (v.depth > maxDepth) {
      if (!deepReported) {
        out.push({ path: visitPath(v), message: `nested deeper than ${maxDepth} levels, the limit (no nodemesh resource needs more than about 10: look for unbalanced brackets or a generated document)` });
        deepReported = true;
      }
      continue;
    }
    if (isArray) {
      for (let i = (x as unknown[]).length - 1; i >= 0; i--) stack.push({ value: (x as unknown[])[i], depth: v.depth + 1, parent: v, key: i });
      continue;
    }
    const keys = Object.keys(x);
    for (let i = keys.length - 1; i >= 0; i--) {
      const k = keys[i]!;
      if (!isWellFormed(k)) out.push({ path: visitPath(v), message: `key ${quote(k)}: ${NOT_UNICODE}: ${loneSurrogate(k)} ${UNICODE_FIX}` });
      else stack.push({ value: (x as Obj)[k], depth: v.depth + 1, parent: v, key: k });
    }
  }
  if (stack.length > 0 && out.length >= MAX_SHAPE_PROBLEMS) out.push({ path: '', message: `more problems not shown (the first ${MAX_SHAPE_PROBLEMS} are above)` });
  return out;
}

function annotationProblems(r: Resource): Problem[] {
  const annotations = r.metadata.annotations;
  if (!annotations) return [];
  let bytes = 0;
  for (const [k, v] of Object.entries(annotations)) bytes += Buffer.byteLength(k) + Buffer.byteLength(v);
  if (bytes <= LIMITS.maxAnnotationsBytes) return [];
  return [{ path: 'metadata.annotations', message: `must total at most ${formatBytes(LIMITS.maxAnnotationsBytes)}, keys and values (these are ${formatBytes(bytes)}): keep large data elsewhere` }];
}

// --- checks a schema cannot express ---

function checkAddresses(addresses: string[], at: string, out: Problem[]): void {
  const families = addresses.map((a) => net.isIP(a));
  if (new Set(families).size < families.length) out.push({ path: at, message: 'must hold at most one IPv4 and one IPv6 address' });
}

function checkPortsUnique(ports: { name?: string; port: number }[] | undefined, at: string, out: Problem[]): void {
  const byPort = new Map<number, number>();
  const byName = new Map<string, number>();
  (ports ?? []).forEach((p, i) => {
    const first = byPort.get(p.port);
    if (first !== undefined) out.push({ path: `${at}[${i}].port`, message: `${p.port} is already used by ${at}[${first}]` });
    else byPort.set(p.port, i);
    if (p.name === undefined) return;
    const firstName = byName.get(p.name);
    if (firstName !== undefined) out.push({ path: `${at}[${i}].name`, message: `"${p.name}" is already used by ${at}[${firstName}]` });
    else byName.set(p.name, i);
  });
}

function checkRegex(value: string, at: string, out: Problem[]): void {
  try {
    new RegExp(value);
  } catch (err) {
    const why = (err as Error).message.replace(/^Invalid regular expression: \/.*\/[a-z]*: /s, '');
    out.push({ path: at, message: `invalid regular expression: ${why}` });
  }
}

// The HTTPRoute rule shape the schema guarantees; kinds.ts keeps rules loosely typed.
interface RouteRule {
  matches?: { path?: { type: string; value: string }; headers?: { type: string; value: string }[]; queryParams?: { type: string; value: string }[] }[];
  filters?: ({ type: string } & Record<string, unknown>)[];
  timeouts?: { request?: string; backendRequest?: string };
}

const FILTER_FIELDS: Record<string, string> = {
  RequestHeaderModifier: 'requestHeaderModifier',
  ResponseHeaderModifier: 'responseHeaderModifier',
  RequestRedirect: 'requestRedirect',
  URLRewrite: 'urlRewrite',
  RequestMirror: 'requestMirror',
};

function checkRouteRule(rule: RouteRule, at: string, out: Problem[]): void {
  (rule.matches ?? []).forEach((m, i) => {
    const mAt = `${at}.matches[${i}]`;
    if (m.path) {
      if (m.path.type === 'RegularExpression') checkRegex(m.path.value, `${mAt}.path.value`, out);
      else if (!m.path.value.startsWith('/')) out.push({ path: `${mAt}.path.value`, message: `must start with / for type ${m.path.type}` });
    }
    for (const list of ['headers', 'queryParams'] as const) {
      (m[list] ?? []).forEach((h, j) => {
        if (h.type === 'RegularExpression') checkRegex(h.value, `${mAt}.${list}[${j}].value`, out);
      });
    }
  });
  const seen = new Map<string, number>();
  (rule.filters ?? []).forEach((f, i) => {
    const fAt = `${at}.filters[${i}]`;
    for (const field of Object.values(FILTER_FIELDS)) {
      if (field !== FILTER_FIELDS[f.type] && f[field] !== undefined) {
        out.push({ path: `${fAt}.${field}`, message: `not allowed with type ${f.type} (set ${FILTER_FIELDS[f.type]} or change type)` });
      }
    }
    // Gateway API: each filter type except RequestMirror at most once per rule.
    const first = seen.get(f.type);
    if (first !== undefined && f.type !== 'RequestMirror') {
      out.push({ path: `${fAt}.type`, message: `${f.type} may appear once per rule (already at ${at}.filters[${first}])` });
    } else if (first === undefined) seen.set(f.type, i);
  });
  if (seen.has('RequestRedirect') && seen.has('URLRewrite')) {
    out.push({ path: `${at}.filters`, message: 'RequestRedirect and URLRewrite cannot be used together' });
  }
  const t = rule.timeouts;
  if (t?.request !== undefined && t.backendRequest !== undefined) {
    const request = parseDurationMs(t.request)!;
    if (request !== 0 && parseDurationMs(t.backendRequest)! > request) {
      out.push({ path: `${at}.timeouts.backendRequest`, message: `must not exceed timeouts.request (${t.request})` });
    }
  }
}

function semanticProblems(r: Resource): Problem[] {
  const out: Problem[] = annotationProblems(r);
  switch (r.kind) {
    case 'Workload': {
      const spec = r.spec as unknown as WorkloadSpec;
      checkAddresses(spec.addresses, 'spec.addresses', out);
      checkPortsUnique(spec.ports, 'spec.ports', out);
      break;
    }
    case 'Service': {
      const spec = r.spec as unknown as ServiceSpec;
      checkAddresses(spec.addresses, 'spec.addresses', out);
      checkPortsUnique(spec.ports, 'spec.ports', out);
      break;
    }
    case 'AuthorizationPolicy': {
      const spec = r.spec as unknown as AuthorizationPolicySpec;
      spec.rules?.forEach((rule, i) =>
        rule.to?.forEach((to, j) => {
          for (const field of ['ports', 'notPorts']) {
            to.operation[field]?.forEach((port, k) => {
              const n = Number(port);
              if (n < 1 || n > 65535) out.push({ path: `spec.rules[${i}].to[${j}].operation.${field}[${k}]`, message: 'must be a port number 1-65535' });
            });
          }
        }),
      );
      break;
    }
    case 'HTTPRoute':
      (r.spec as { rules: RouteRule[] }).rules.forEach((rule, i) => checkRouteRule(rule, `spec.rules[${i}]`, out));
      break;
    default:
      break;
  }
  return out;
}

// --- documents ---

function kindInfo(kind: unknown): KindInfo | undefined {
  return typeof kind === 'string' && Object.prototype.hasOwnProperty.call(KINDS, kind) ? KINDS[kind as KindName] : undefined;
}

/** The `(Kind namespace/name)` part of a problem line, from whatever the document gets right. */
function describeDoc(value: unknown): string {
  if (!isObj(value)) return 'kind?';
  const kind = typeof value.kind === 'string' && value.kind !== '' ? shown(value.kind) : 'kind?';
  const md = isObj(value.metadata) ? value.metadata : {};
  if (typeof md.name !== 'string' || md.name === '') return kind;
  const name = shown(md.name);
  if (kindInfo(value.kind)?.namespaced === false) return `${kind} ${name}`;
  const ns = typeof md.namespace === 'string' && md.namespace !== '' ? shown(md.namespace) : 'default';
  return `${kind} ${ns}/${name}`;
}

function line(doc: SourceDoc, what: string, p: Problem): string {
  return `${shown(doc.source)} doc ${doc.index} (${what}): ${p.path ? `${p.path}: ` : ''}${p.message}`;
}

function envelopeProblems(value: Obj): Problem[] {
  const out: Problem[] = [];
  if (value.apiVersion === undefined) out.push({ path: 'apiVersion', message: 'required' });
  else if (value.apiVersion !== API_VERSION) out.push({ path: 'apiVersion', message: `must be ${API_VERSION}` });
  if (value.kind === undefined) out.push({ path: 'kind', message: 'required' });
  else if (typeof value.kind !== 'string') out.push({ path: 'kind', message: 'must be string' });
  else if (!kindInfo(value.kind)) {
    const guess = closest(value.kind, KIND_NAMES);
    const hint = guess ? `did you mean ${guess}?` : `one of ${KIND_NAMES.join(', ')}`;
    out.push({ path: 'kind', message: `unknown kind ${quote(value.kind)} (${hint})` });
  }
  return out;
}

/**
 * Checks one document against its kind's schema and fills defaults (a
 * namespaced kind without metadata.namespace gets "default", as kubectl does).
 * Pure: the input is not modified; never throws for bad input.
 */
export function validateResource(doc: SourceDoc): { resource?: Resource; problems: string[] } {
  if (!isObj(doc.value)) {
    const got = Array.isArray(doc.value) ? 'a list' : doc.value === null ? 'null' : typeof doc.value;
    return { problems: [line(doc, 'kind?', { path: '', message: `must be a mapping with apiVersion, kind, metadata and spec (got ${got})` })] };
  }
  const shape = shapeProblems(doc.value);
  if (shape.length) return { problems: [...new Set(shape.map((p) => line(doc, describeDoc(doc.value), p)))] };
  // Plain data no deeper than the limit: cloning cannot throw.
  const value: Obj = structuredClone(doc.value);
  const info = kindInfo(value.kind);
  if (info?.namespaced && isObj(value.metadata) && value.metadata.namespace === undefined) value.metadata.namespace = 'default';
  const what = describeDoc(value);
  const problems: Problem[] = envelopeProblems(value);
  if (info) {
    const validate = (validators ??= compileValidators())[info.kind];
    if (!validate(value)) {
      const before = problems.length;
      for (const e of validate.errors ?? []) {
        const p = describeAjvError(e, value);
        if (p) problems.push(p);
      }
      // Never let a rejected document through because its errors were all filtered as noise.
      if (problems.length === before) problems.push({ path: '', message: 'does not match its schema' });
    } else if (problems.length === 0) {
      problems.push(...semanticProblems(value as unknown as Resource));
    }
  }
  const lines = [...new Set(problems.map((p) => line(doc, what, p)))];
  return lines.length ? { problems: lines } : { resource: value as unknown as Resource, problems: [] };
}

/** The identity a document claims, even when it is otherwise invalid; undefined if it names none. */
function claimedKey(value: unknown): string | undefined {
  if (!isObj(value) || !isObj(value.metadata) || typeof value.metadata.name !== 'string') return undefined;
  const info = kindInfo(value.kind);
  if (!info) return undefined;
  const ns = info.namespaced ? (typeof value.metadata.namespace === 'string' ? value.metadata.namespace : 'default') : undefined;
  return resourceKey({ kind: info.kind, metadata: { namespace: ns, name: value.metadata.name } });
}

/**
 * Validates a batch all or nothing: returns every resource, or throws one
 * ResourceError listing every problem of every document, so a bad apply
 * changes nothing.
 */
export function validateDocuments(docs: SourceDoc[]): Resource[] {
  const resources: Resource[] = [];
  const problems: string[] = [];
  const seen = new Map<string, SourceDoc>();
  for (const doc of docs) {
    const r = validateResource(doc);
    if (r.resource) resources.push(r.resource);
    problems.push(...r.problems);
    const key = claimedKey(doc.value);
    if (key === undefined) continue;
    const first = seen.get(key);
    if (first) {
      const message = `duplicate of ${first.source} doc ${first.index} (same kind, namespace and name; merge them or rename one)`;
      problems.push(line(doc, describeDoc(doc.value), { path: 'metadata.name', message }));
    } else seen.set(key, doc);
  }
  if (problems.length) throw new ResourceError(problems);
  return resources;
}

/** Offset of the first collection nested deeper than `max` in a parsed-but-not-composed YAML document. */
function tooDeepAt(doc: CST.Document, max: number): number | undefined {
  const stack: [CST.Token | null | undefined, number][] = [[doc.value, 1]];
  while (stack.length > 0) {
    const [t, depth] = stack.pop()!;
    if (!t || (t.type !== 'block-map' && t.type !== 'block-seq' && t.type !== 'flow-collection')) continue;
    if (depth > max) return t.offset;
    for (const item of t.items) {
      stack.push([item.value, depth + 1]);
      if ('key' in item) stack.push([item.key, depth + 1]);
    }
  }
  return undefined;
}

/**
 * Splits a YAML stream (JSON is YAML too) into documents, skipping empty ones
 * but keeping each document's number in the file. Syntax errors, more than
 * LIMITS.maxDocuments documents and nesting deeper than
 * LIMITS.maxNestingDepth throw a ResourceError naming the document and line;
 * the last two are found on the parser's tokens, before the recursive
 * composer could overflow the stack or build a million documents.
 */
export function parseDocuments(text: string, source: string): SourceDoc[] {
  const docs: SourceDoc[] = [];
  const problems: string[] = [];
  const src = shown(source);
  const lines = new LineCounter();
  const lineOf = (offset: number): string => `line ${lines.linePos(offset).line}: `;
  function* checked(): Generator<CST.Token> {
    let count = 0;
    for (const token of new Parser(lines.addNewLine).parse(text)) {
      if (token.type === 'document') {
        count++;
        if (count > LIMITS.maxDocuments) {
          problems.push(`${src}: more than ${LIMITS.maxDocuments} documents, the limit per command (split the file and apply the parts one by one)`);
          return;
        }
        const deep = tooDeepAt(token, LIMITS.maxNestingDepth);
        if (deep !== undefined) {
          problems.push(`${src} doc ${count}: ${lineOf(deep)}nested deeper than ${LIMITS.maxNestingDepth} levels, the limit (no nodemesh resource needs more than about 10: look for unbalanced brackets or a generated document)`);
          return;
        }
      }
      yield token;
    }
  }
  let index = 0;
  for (const doc of new Composer().compose(checked())) {
    index++;
    if (doc.errors.length) {
      for (const err of doc.errors) {
        const message = err.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '');
        problems.push(`${src} doc ${index}: ${lineOf(err.pos[0])}${message.length > 200 ? `${message.slice(0, 200)}…` : message}`);
      }
      continue;
    }
    let value: unknown;
    try {
      value = doc.toJS();
    } catch (err) {
      // e.g. an alias bomb exceeding maxAliasCount
      problems.push(`${src} doc ${index}: ${(err as Error).message}`);
      continue;
    }
    if (value === null || value === undefined) continue;
    // Aliases can nest what the tokens did not.
    const sd = { source, index, value };
    const shape = shapeProblems(value);
    if (shape.length) problems.push(...shape.map((p) => line(sd, describeDoc(value), p)));
    else docs.push(sd);
  }
  if (problems.length) throw new ResourceError([...new Set(problems)]);
  return docs;
}
