/** apply, get, delete: kubectl-shaped commands against the controller. */
import * as fs from 'node:fs';
import * as path from 'node:path';

import YAML from 'yaml';

import { displayName, findKind, KINDS, type Resource } from '../../api/kinds';
import { formatBytes, LIMITS } from '../../api/limits';
import type { Document } from '../../api/proto';
import { parseDocuments, ResourceError } from '../../api/validate';
import { defineCommand, EXIT, UsageError, type Io } from '../command';
import { table, toJson } from '../output';
import { withAdmin } from './controller';

const credentialsOption = { credentials: { type: 'string' }, controller: { type: 'string' } } as const;
const credentialsHelp = { credentials: 'admin credentials file', controller: 'controller address IP:PORT' };

/** Reads at most `max` bytes of standard input; more is an error, found before the rest is read. */
function readStdinBounded(max: number): string {
  const chunks: Buffer[] = [];
  let total = 0;
  const buf = Buffer.alloc(64 * 1024);
  for (;;) {
    let n: number;
    try {
      n = fs.readSync(0, buf, 0, buf.length, null);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EAGAIN') continue;
      if ((err as NodeJS.ErrnoException).code === 'EOF') break;
      throw err;
    }
    if (n === 0) break;
    total += n;
    if (total > max) throw tooLarge('stdin', `more than ${formatBytes(max)}`);
    chunks.push(Buffer.from(buf.subarray(0, n)));
  }
  return Buffer.concat(chunks).toString('utf8');
}

function tooLarge(what: string, size: string): ResourceError {
  return new ResourceError([
    `${what}: ${size} of manifests, over the ${formatBytes(LIMITS.maxManifestBytes)} limit of one command (the largest request the controller takes by default): split them and apply the parts one by one`,
  ]);
}

/**
 * Reads -f FILE|DIR|- into documents (a directory: its .yaml, .yml and .json
 * files, sorted). Sizes are checked before anything is read, so a huge file
 * costs a stat, not its size in memory several times over.
 */
export function readManifests(target: string, stdin: () => string = () => readStdinBounded(LIMITS.maxManifestBytes)): Document[] {
  let files: { source: string; text: string }[];
  if (target === '-') {
    files = [{ source: 'stdin', text: stdin() }];
  } else {
    let stat: fs.Stats;
    try {
      stat = fs.statSync(target);
    } catch {
      throw new UsageError(`-f ${target}: no such file or directory`);
    }
    const paths = stat.isDirectory()
      ? fs
          .readdirSync(target)
          .filter((f) => /\.(ya?ml|json)$/.test(f))
          .sort()
          .map((f) => path.join(target, f))
      : [target];
    if (paths.length === 0) throw new UsageError(`-f ${target}: no .yaml, .yml or .json files there`);
    const total = paths.reduce((n, p) => n + fs.statSync(p).size, 0);
    if (total > LIMITS.maxManifestBytes) throw tooLarge(`-f ${target}`, formatBytes(total));
    files = paths.map((p) => ({ source: stat.isDirectory() ? path.join(path.basename(target), path.basename(p)) : path.basename(p), text: fs.readFileSync(p, 'utf8') }));
  }
  const docs: Document[] = [];
  for (const f of files) for (const d of parseDocuments(f.text, f.source)) docs.push({ source: d.source, index: d.index, json: JSON.stringify(d.value) });
  if (docs.length === 0) throw new UsageError(`-f ${target}: no documents`);
  return docs;
}

export const applyCommand = defineCommand({
  name: 'apply',
  summary: 'Create or update resources from YAML or JSON (all or nothing)',
  usage: 'apply -f FILE|DIR|- [--dry-run]',
  description: 'Every document is validated first; if any is invalid, nothing is applied and every problem is listed.',
  options: { filename: { type: 'string', short: 'f', multiple: true }, 'dry-run': { type: 'boolean', default: false }, ...credentialsOption },
  optionHelp: { filename: 'file, directory or - for stdin (repeatable)', 'dry-run': 'validate and compare only', ...credentialsHelp },
  async run(values, _p, io) {
    const targets = (values.filename as string[] | undefined) ?? [];
    if (targets.length === 0) throw new UsageError('nodemesh apply: -f FILE|DIR|- is required');
    const docs = targets.flatMap((t) => readManifests(t));
    if (docs.length > LIMITS.maxDocuments) throw new ResourceError([`${docs.length} documents, over the limit of ${LIMITS.maxDocuments} per command: apply them in several parts`]);
    return withAdmin(values, io, async (c) => {
      const r = await c.apply(docs, values['dry-run'] as boolean);
      for (const x of r.results) io.out(`${displayName({ kind: x.kind, metadata: { name: x.name } })} ${x.action}${values['dry-run'] ? ' (dry run)' : ''}\n`);
      return EXIT.ok;
    });
  },
});

function age(ts: string | undefined): string {
  if (!ts) return '-';
  const s = Math.max(0, Math.floor((Date.now() - Date.parse(ts)) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172800) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

const COLUMNS: Record<string, { headers: string[]; row: (r: Resource) => string[] }> = {
  Workload: {
    headers: ['NODE', 'ADDRESSES', 'SERVICE ACCOUNT', 'READY'],
    row: (r) => {
      const s = r.spec as { node: string; addresses: string[]; serviceAccount: string; ready: boolean };
      return [s.node, s.addresses.join(','), s.serviceAccount, String(s.ready)];
    },
  },
  Service: {
    headers: ['ADDRESSES', 'PORTS', 'SELECTOR'],
    row: (r) => {
      const s = r.spec as { addresses: string[]; ports: { port: number; appProtocol?: string }[]; selector: Record<string, string> };
      return [s.addresses.join(','), s.ports.map((p) => `${p.port}${p.appProtocol ? `/${p.appProtocol}` : ''}`).join(','), Object.entries(s.selector).map(([k, v]) => `${k}=${v}`).join(',')];
    },
  },
  AuthorizationPolicy: {
    headers: ['ACTION', 'RULES', 'SELECTOR'],
    row: (r) => {
      const s = r.spec as { action: string; rules?: unknown[]; selector?: { matchLabels: Record<string, string> } };
      return [s.action, String(s.rules?.length ?? 0), s.selector ? Object.entries(s.selector.matchLabels).map(([k, v]) => `${k}=${v}`).join(',') : '(namespace)'];
    },
  },
  PeerAuthentication: {
    headers: ['MODE', 'SELECTOR'],
    row: (r) => {
      const s = r.spec as { mtls: { mode: string }; selector?: { matchLabels: Record<string, string> } };
      return [s.mtls.mode, s.selector ? Object.entries(s.selector.matchLabels).map(([k, v]) => `${k}=${v}`).join(',') : '(namespace)'];
    },
  },
  HTTPRoute: {
    headers: ['PARENTS', 'RULES'],
    row: (r) => {
      const s = r.spec as { parentRefs: { name: string }[]; rules: unknown[] };
      return [s.parentRefs.map((p) => p.name).join(','), String(s.rules.length)];
    },
  },
  MeshConfig: {
    headers: ['TRUST DOMAIN', 'OUTBOUND', 'MTLS'],
    row: (r) => {
      const s = r.spec as { trustDomain: string; outboundTrafficPolicy: { mode: string }; defaultMtlsMode: string };
      return [s.trustDomain, s.outboundTrafficPolicy.mode, s.defaultMtlsMode];
    },
  },
};

function printResources(io: Io, kind: string, items: Resource[], format: string, allNamespaces: boolean): void {
  if (format === 'json') io.out(toJson(items.length === 1 ? items[0] : { apiVersion: 'v1', kind: 'List', items }));
  else if (format === 'yaml') io.out(items.map((i) => YAML.stringify(i)).join('---\n'));
  else {
    const cols = COLUMNS[kind]!;
    const ns = KINDS[kind as keyof typeof KINDS].namespaced && allNamespaces;
    const headers = [...(ns ? ['NAMESPACE'] : []), 'NAME', ...cols.headers, 'AGE'];
    io.out(table(headers, items.map((i) => [...(ns ? [i.metadata.namespace ?? ''] : []), i.metadata.name, ...cols.row(i), age(i.metadata.creationTimestamp)])));
  }
}

export const getCommand = defineCommand({
  name: 'get',
  summary: 'List resources, or show one',
  usage: 'get KIND [NAME] [-n NS | -A] [-l SELECTOR] [-o table|yaml|json]',
  description: `KIND: ${Object.values(KINDS).map((k) => `${k.plural} (${k.aliases.join(', ')})`).join(', ')}`,
  options: {
    namespace: { type: 'string', short: 'n', default: 'default' },
    'all-namespaces': { type: 'boolean', short: 'A', default: false },
    selector: { type: 'string', short: 'l' },
    output: { type: 'string', short: 'o', default: 'table' },
    ...credentialsOption,
  },
  optionHelp: { namespace: 'namespace', 'all-namespaces': 'every namespace', selector: 'label selector (app=web,tier!=db)', output: 'table, yaml or json', ...credentialsHelp },
  allowPositionals: true,
  async run(values, positionals, io) {
    const [kindName, name, extra] = positionals;
    if (!kindName) throw new UsageError('nodemesh get: which kind? e.g. nodemesh get services');
    if (extra) throw new UsageError(`nodemesh get: unexpected argument "${extra}"`);
    const kind = findKind(kindName);
    if (!kind) throw new UsageError(`nodemesh get: unknown kind "${kindName}": one of ${Object.values(KINDS).map((k) => k.plural).join(', ')}`);
    const format = values.output as string;
    if (!['table', 'yaml', 'json'].includes(format)) throw new UsageError(`nodemesh get: --output must be table, yaml or json, not ${format}`);
    return withAdmin(values, io, async (c) => {
      if (name) {
        printResources(io, kind.kind, [await c.get(kind.kind, values.namespace as string, name)], format, false);
        return EXIT.ok;
      }
      const all = values['all-namespaces'] as boolean;
      const r = await c.list(kind.kind, { namespace: values.namespace as string, allNamespaces: all, labelSelector: values.selector as string | undefined });
      if (r.items.length === 0 && format === 'table') io.err(`no ${kind.plural} found${kind.namespaced && !all ? ` in namespace ${String(values.namespace)}` : ''}\n`);
      else printResources(io, kind.kind, r.items, format, all);
      return EXIT.ok;
    });
  },
});

export const deleteCommand = defineCommand({
  name: 'delete',
  summary: 'Delete resources named in files, or one by kind and name (all or nothing)',
  usage: 'delete -f FILE|DIR|- | KIND NAME [-n NS]',
  options: { filename: { type: 'string', short: 'f', multiple: true }, namespace: { type: 'string', short: 'n', default: 'default' }, ...credentialsOption },
  optionHelp: { filename: 'file, directory or - (repeatable)', namespace: 'namespace (with KIND NAME)', ...credentialsHelp },
  allowPositionals: true,
  async run(values, positionals, io) {
    const files = (values.filename as string[] | undefined) ?? [];
    let targets: { kind: string; namespace?: string; name: string }[];
    if (files.length) {
      if (positionals.length) throw new UsageError('nodemesh delete: give -f FILE or KIND NAME, not both');
      targets = files.flatMap((f) => readManifests(f)).map((d) => {
        const r = JSON.parse(d.json) as Partial<Resource>;
        if (!r.kind || !r.metadata?.name) throw new UsageError(`${d.source} doc ${d.index}: needs kind and metadata.name`);
        return { kind: r.kind, namespace: r.metadata.namespace ?? 'default', name: r.metadata.name };
      });
    } else {
      const [kindName, name] = positionals;
      if (!kindName || !name) throw new UsageError('nodemesh delete: -f FILE|DIR|- or KIND NAME is required');
      const kind = findKind(kindName);
      if (!kind) throw new UsageError(`nodemesh delete: unknown kind "${kindName}"`);
      targets = [{ kind: kind.kind, namespace: values.namespace as string, name }];
    }
    return withAdmin(values, io, async (c) => {
      const r = await c.delete(targets);
      for (const d of r.deleted) io.out(`${displayName(d)} deleted\n`);
      return EXIT.ok;
    });
  },
});
