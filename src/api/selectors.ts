/**
 * Label selectors: the map form resources use (`selector`, `matchLabels`) and
 * the text form `nodemesh get -l` accepts, with kubectl's syntax and meaning:
 * `app=web,tier!=db,env in (a,b),env notin (c),release,!legacy`.
 */
import { MeshError } from '../errors';
import { quote } from './limits';

export type LabelOperator = '=' | '!=' | 'exists' | '!exists' | 'in' | 'notin';

export interface LabelRequirement {
  key: string;
  op: LabelOperator;
  /** One value for = and !=, none for exists and !exists, one or more for in and notin. */
  values: string[];
}

/**
 * Whether labels carry every key/value of the selector. An empty selector
 * matches everything (Kubernetes LabelSelector semantics); callers that want
 * "empty selects nothing", like a Service, reject empty selectors at validation.
 */
export function labelSelectorMatches(selector: Record<string, string> | undefined, labels: Record<string, string> | undefined): boolean {
  if (selector === undefined) return true;
  for (const [k, v] of Object.entries(selector)) {
    if (labels === undefined || !Object.prototype.hasOwnProperty.call(labels, k) || labels[k] !== v) return false;
  }
  return true;
}

/** A selector as the key/value pairs a hot path checks (a policy, once per connection). */
export function selectorPairs(selector: Record<string, string> | undefined): readonly (readonly [string, string])[] {
  return Object.entries(selector ?? {});
}

/** labelSelectorMatches() over pairs made once by selectorPairs(). */
export function pairsMatch(pairs: readonly (readonly [string, string])[], labels: Record<string, string> | undefined): boolean {
  for (const [k, v] of pairs) {
    if (labels === undefined || !Object.prototype.hasOwnProperty.call(labels, k) || labels[k] !== v) return false;
  }
  return true;
}

const SYNTAX = 'key=value, key!=value, key in (a,b), key notin (a,b), key, !key';
const KEY_RE = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
const VALUE_RE = /^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$/;

type Token = { kind: 'word' | 'op'; text: string; pos: number };

function tokenize(text: string, fail: (pos: number, what: string) => never): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  while (i < text.length) {
    const c = text[i]!;
    if (/\s/.test(c)) {
      i++;
    } else if (text.startsWith('!=', i) || text.startsWith('==', i)) {
      tokens.push({ kind: 'op', text: text.slice(i, i + 2), pos: i });
      i += 2;
    } else if ('=!(),'.includes(c)) {
      tokens.push({ kind: 'op', text: c, pos: i });
      i++;
    } else if (c === '<' || c === '>') {
      fail(i, `operator ${c} is not supported`);
    } else {
      const start = i;
      while (i < text.length && !/[\s=!(),<>]/.test(text[i]!)) i++;
      tokens.push({ kind: 'word', text: text.slice(start, i), pos: start });
    }
  }
  return tokens;
}

/** Parses kubectl's `-l` syntax; throws a MeshError naming the position and the expected syntax. */
export function parseLabelSelector(text: string): LabelRequirement[] {
  // Typed on the const so calls narrow as assertions.
  const fail: (pos: number, what: string) => never = (pos, what) => {
    throw new MeshError('NM_ERR_INVALID_SELECTOR', `label selector ${quote(text)}: ${what} at position ${pos + 1} (syntax: ${SYNTAX})`);
  };
  const tokens = tokenize(text, fail);
  const end = text.length;
  let i = 0;
  const peek = (): Token | undefined => tokens[i];
  const next = (): Token | undefined => tokens[i++];
  const key = (): string => {
    const t = next();
    if (t?.kind !== 'word') fail(t?.pos ?? end, 'expected a label key');
    if (!KEY_RE.test(t.text)) fail(t.pos, `invalid label key ${quote(t.text)}`);
    return t.text;
  };
  const value = (): string => {
    const t = peek();
    if (t?.kind !== 'word') return ''; // kubectl accepts `key=` as "label present and empty"
    i++;
    if (!VALUE_RE.test(t.text)) fail(t.pos, `invalid label value ${quote(t.text)}`);
    return t.text;
  };

  const out: LabelRequirement[] = [];
  if (tokens.length === 0) return out;
  for (;;) {
    const first = peek();
    if (first?.kind === 'op' && first.text === '!') {
      i++;
      out.push({ key: key(), op: '!exists', values: [] });
    } else {
      const k = key();
      const op = peek();
      if (op === undefined || (op.kind === 'op' && op.text === ',')) {
        out.push({ key: k, op: 'exists', values: [] });
      } else if (op.kind === 'op' && (op.text === '=' || op.text === '==' || op.text === '!=')) {
        i++;
        out.push({ key: k, op: op.text === '!=' ? '!=' : '=', values: [value()] });
      } else if (op.kind === 'word' && (op.text === 'in' || op.text === 'notin')) {
        i++;
        const open = next();
        if (open?.text !== '(') fail(open?.pos ?? end, `expected ( after ${op.text}`);
        const values: string[] = [];
        for (;;) {
          const t = next();
          if (t?.kind !== 'word') fail(t?.pos ?? end, `expected a value in the ${op.text} list`);
          if (!VALUE_RE.test(t.text)) fail(t.pos, `invalid label value ${quote(t.text)}`);
          values.push(t.text);
          const sep = next();
          if (sep?.text === ')') break;
          if (sep?.text !== ',') fail(sep?.pos ?? end, 'expected , or ) in the value list');
        }
        out.push({ key: k, op: op.text, values });
      } else {
        fail(op.pos, `expected =, !=, in or notin after ${quote(k)}`);
      }
    }
    const sep = next();
    if (sep === undefined) return out;
    if (sep.text !== ',') fail(sep.pos, 'expected , between requirements');
  }
}

/** Whether labels satisfy every requirement; != and notin match when the key is absent, as in kubectl. */
export function requirementsMatch(requirements: readonly LabelRequirement[], labels: Record<string, string> | undefined): boolean {
  return requirements.every((r) => {
    const has = labels !== undefined && Object.prototype.hasOwnProperty.call(labels, r.key);
    const v = has ? labels![r.key]! : undefined;
    switch (r.op) {
      case 'exists':
        return has;
      case '!exists':
        return !has;
      case '=':
      case 'in':
        return has && r.values.includes(v!);
      case '!=':
      case 'notin':
        return !has || !r.values.includes(v!);
    }
  });
}

/** `-l` text against a label map; throws a MeshError when the text is not a valid selector. */
export function matchesSelectorText(text: string, labels: Record<string, string> | undefined): boolean {
  return requirementsMatch(parseLabelSelector(text), labels);
}
