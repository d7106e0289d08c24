/**
 * The last config this node took and ACKed, kept in its state dir so that a
 * proxy restarted while the controller is away serves the policy it had, not
 * nothing and never everything (see docs/architecture.md, 'No serving before
 * policy').
 *
 * The file holds the config in the stream's own form: one snapshot
 * ConfigMessage of every item (Workloads and Services in their compact wire
 * form, the rest as JSON), so reading it back goes through the same
 * ConfigState.prepare, StateUpdater.validate and commit as a snapshot from
 * the controller, and rebuilds the state exactly. Layout:
 *
 *   nodemesh-config v1\n
 *   {"node":"n1","version":42,"savedAtUnixMs":…,"items":…,"bodyBytes":…}\n
 *   gzip(ConfigMessage)
 *
 * gzip's CRC and length catch a torn or damaged file; the node name keeps a
 * state dir copied from another node from being served. Writes are
 * coalesced (at most one per `saveDelayMs`, always ending with the latest
 * version), encoded a chunk of items per tick and compressed and written in
 * the thread pool, so a burst of versions costs one write and a 50,000-item
 * config never holds the event loop for long.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { setImmediate as nextTick } from 'node:timers/promises';
import { promisify } from 'node:util';
import * as zlib from 'node:zlib';

import { decodeConfigMessage, encodeItem, frameSnapshotItems, snapshotHead } from '../../api/config-wire';
import type { ConfigMessage, Item } from '../../api/proto';
import { MeshError } from '../../errors';
import { silentLogger, type Logger } from '../../log';
import { writeFileAtomic } from './atomic-file';
import { ConfigState, type ApplyResult } from './config-state';
import type { StateUpdater } from './updater';

const gunzip = promisify(zlib.gunzip);

export const LAST_GOOD_FILE = 'config.bin';
const MAGIC = 'nodemesh-config v1\n';

export const LAST_GOOD_DEFAULTS = Object.freeze({
  /** A burst of versions within this is written once, as its last version. */
  saveDelayMs: 1_000,
  /** Items encoded per tick of the event loop. */
  chunkItems: 500,
  /** Larger files are not read (a 250,000-item config compresses far below this). */
  maxFileBytes: 256 * 1024 * 1024,
  maxBodyBytes: 1024 * 1024 * 1024,
});

export class LastGoodError extends MeshError {}

/** What a file says about itself. */
export interface SavedConfig {
  file: string;
  node: string;
  version: number;
  savedAtUnixMs: number;
  items: number;
  /** Size of the file. */
  bytes: number;
}

export interface LoadedConfig extends SavedConfig {
  /** The snapshot, as the config stream would have delivered it. */
  message: ConfigMessage;
}

/**
 * An item in the form the controller sends it. ConfigState keeps Workloads
 * and Services as it parsed them from their compact forms (see
 * config-state.ts, parseItem); those go back to the same forms, anything else
 * as JSON, which parses back to the same object.
 */
export function wireItem(key: string, value: unknown): Item {
  const v = value as Record<string, unknown>;
  if (key.startsWith('Workload/') && v.kind === 'Workload' && !('apiVersion' in v)) {
    const m = v.metadata as { labels?: Record<string, string>; resourceVersion?: string };
    const s = v.spec as { node: string; serviceAccount: string; addresses: string[]; ready: boolean; netns?: string };
    return {
      key,
      workload: { node: s.node, serviceAccount: s.serviceAccount, addresses: s.addresses, labels: m.labels ?? {}, ready: s.ready, netns: s.netns ?? '', resourceVersion: m.resourceVersion ?? '' },
    } as Item;
  }
  if (key.startsWith('Service/') && Array.isArray(v.endpoints)) {
    const { endpoints, ...service } = v;
    return { key, service: { json: JSON.stringify(service), endpoints: endpoints as string[] } };
  }
  return { key, json: JSON.stringify(value) };
}

/** The file's bytes for `entries` at `version`; yields to the event loop every `chunkItems` items. */
export async function encodeLastGood(
  node: string,
  version: number,
  entries: readonly (readonly [string, unknown])[],
  savedAtUnixMs = Date.now(),
  chunkItems = LAST_GOOD_DEFAULTS.chunkItems,
): Promise<Buffer> {
  // Framed a chunk at a time: each item's buffer dies young, and what is held until the end is one buffer per chunk
  // (at 50,000 items: ~100 buffers, ~6 MiB outside the V8 heap), not 50,000 buffers promoted to the old space.
  const chunks: Buffer[] = [];
  let itemsBytes = 0;
  for (let i = 0; i < entries.length; i += chunkItems) {
    const encoded: Buffer[] = [];
    for (const [k, v] of entries.slice(i, i + chunkItems)) encoded.push(encodeItem(wireItem(k, v)));
    const framed = frameSnapshotItems(encoded);
    chunks.push(framed);
    itemsBytes += framed.length;
    await nextTick();
  }
  const head = snapshotHead({ version, totalItems: entries.length }, itemsBytes);
  const bodyBytes = head.length + itemsBytes;
  const header = JSON.stringify({ node, version, savedAtUnixMs, items: entries.length, bodyBytes });
  // Compressed piece by piece: the body is never one buffer.
  const gz = zlib.createGzip({ level: 6 });
  const out: Buffer[] = [Buffer.from(MAGIC + header + '\n')];
  gz.on('data', (d: Buffer) => out.push(d));
  const done = new Promise<void>((resolve, reject) => {
    gz.once('end', resolve);
    gz.once('error', reject);
  });
  gz.write(head);
  for (const c of chunks) gz.write(c);
  gz.end();
  await done;
  return Buffer.concat(out);
}

/** Why a file is not used, with what to do about it. */
export function lastGoodUnusable(file: string, why: string): LastGoodError {
  return new LastGoodError(
    'NM_ERR_LAST_GOOD',
    `the last config in ${file} is not used: ${why}. The proxy waits for the controller instead and writes a new file from its next config; remove the file to silence this`,
  );
}

/** Reads a file written by encodeLastGood for `node`; throws LastGoodError naming the file when it cannot be used. */
export async function decodeLastGood(bytes: Buffer, file: string, node: string, maxBodyBytes = LAST_GOOD_DEFAULTS.maxBodyBytes): Promise<LoadedConfig> {
  if (bytes.subarray(0, MAGIC.length).toString('latin1') !== MAGIC) throw lastGoodUnusable(file, 'it is not a nodemesh config file (its first line is not "nodemesh-config v1")');
  const nl = bytes.indexOf(0x0a, MAGIC.length);
  if (nl < 0 || nl - MAGIC.length > 4096) throw lastGoodUnusable(file, 'its header is cut off (the file is damaged)');
  let h: { node?: unknown; version?: unknown; savedAtUnixMs?: unknown; items?: unknown; bodyBytes?: unknown };
  try {
    h = JSON.parse(bytes.subarray(MAGIC.length, nl).toString('utf8')) as typeof h;
  } catch {
    throw lastGoodUnusable(file, 'its header is not JSON (the file is damaged)');
  }
  const whole = (n: unknown): n is number => Number.isSafeInteger(n) && (n as number) >= 0;
  if (typeof h.node !== 'string' || !whole(h.version) || !whole(h.savedAtUnixMs) || !whole(h.items) || !whole(h.bodyBytes) || h.version === 0)
    throw lastGoodUnusable(file, 'its header lacks node, version, savedAtUnixMs, items or bodyBytes (the file is damaged)');
  if (h.node !== node) throw lastGoodUnusable(file, `it holds the config of node ${JSON.stringify(h.node)}, not of ${JSON.stringify(node)} (a state dir copied from another node? give each node its own --state-dir)`);
  if (h.bodyBytes > maxBodyBytes) throw lastGoodUnusable(file, `its header says ${h.bodyBytes} bytes, more than the ${maxBodyBytes} a config may take`);
  let body: Buffer;
  try {
    body = await gunzip(bytes.subarray(nl + 1), { maxOutputLength: Math.max(1, h.bodyBytes) });
  } catch (err) {
    throw lastGoodUnusable(file, `its body does not decompress (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}: the file is damaged or cut off)`);
  }
  if (body.length !== h.bodyBytes) throw lastGoodUnusable(file, `its body is ${body.length} bytes, the header says ${h.bodyBytes} (the file is damaged)`);
  let message: ConfigMessage;
  try {
    message = decodeConfigMessage(body);
  } catch (err) {
    throw lastGoodUnusable(file, `its body is not a config message (${(err as Error).message})`);
  }
  const snap = message.snapshot;
  if (!snap || snap.version !== h.version || snap.items.length !== h.items || snap.more)
    throw lastGoodUnusable(file, `its body is not the whole snapshot of version ${h.version} with ${h.items} items its header names (the file is damaged)`);
  return { file, node, version: h.version, savedAtUnixMs: h.savedAtUnixMs, items: h.items, bytes: bytes.length, message: { snapshot: snap } };
}

export interface LastGoodStoreOptions {
  /** The proxy's state dir; the file is <dir>/config.bin. */
  dir: string;
  node: string;
  log?: Logger;
  saveDelayMs?: number;
  maxFileBytes?: number;
}

/** The node's last-good config file: coalesced saves, and the one read at start. */
export class LastGoodStore {
  readonly file: string;
  readonly #o: LastGoodStoreOptions;
  readonly #log: Logger;
  #saved: SavedConfig | undefined;
  /** The state to write next (the latest version wins). */
  #pending: ConfigState | undefined;
  #timer: NodeJS.Timeout | undefined;
  #writing: Promise<void> | undefined;
  /** How long the last write took, end to end (encode, compress, write, fsync, rename). */
  #lastWriteMs = 0;

  constructor(opts: LastGoodStoreOptions) {
    this.#o = opts;
    this.file = path.join(opts.dir, LAST_GOOD_FILE);
    this.#log = (opts.log ?? silentLogger()).child({ component: 'last-good' });
  }

  /** The file as last written or read by this process. */
  get saved(): SavedConfig | undefined {
    return this.#saved;
  }

  get lastWriteMs(): number {
    return this.#lastWriteMs;
  }

  /** A version was taken and ACKed: written within saveDelayMs unless a later one replaces it first. */
  save(state: ConfigState): void {
    this.#pending = state;
    if (this.#timer || this.#writing) return;
    this.#timer = setTimeout(() => void this.#write(), this.#o.saveDelayMs ?? LAST_GOOD_DEFAULTS.saveDelayMs);
    this.#timer.unref();
  }

  /** Writes what is pending now; resolves once nothing is pending or being written. */
  async flush(): Promise<void> {
    for (;;) {
      if (this.#writing) await this.#writing;
      else if (this.#pending) {
        clearTimeout(this.#timer);
        this.#timer = undefined;
        await this.#write();
      } else return;
    }
  }

  async #write(): Promise<void> {
    this.#timer = undefined;
    const state = this.#pending;
    this.#pending = undefined;
    if (!state || this.#writing) return;
    // The items as they are in this tick: a delta taken while the file is encoded patches the state, not this copy.
    const version = state.version;
    const entries = [...state.items];
    const started = performance.now();
    this.#writing = (async () => {
      const savedAtUnixMs = Date.now();
      const bytes = await encodeLastGood(this.#o.node, version, entries, savedAtUnixMs);
      await writeFileAtomic(this.file, bytes, 0o600);
      this.#lastWriteMs = performance.now() - started;
      this.#saved = { file: this.file, node: this.#o.node, version, savedAtUnixMs, items: entries.length, bytes: bytes.length };
      this.#log.debug({ version, items: entries.length, bytes: bytes.length, ms: Math.round(this.#lastWriteMs) }, 'last config saved');
    })();
    try {
      await this.#writing;
    } catch (err) {
      // The previous file stays as it was; the next version tries again.
      this.#log.warn({ file: this.file, version, err: (err as Error).message }, 'cannot save the last config (a restart while the controller is away would start from an older one, or none)');
    } finally {
      this.#writing = undefined;
      if (this.#pending && !this.#timer) {
        this.#timer = setTimeout(() => void this.#write(), this.#o.saveDelayMs ?? LAST_GOOD_DEFAULTS.saveDelayMs);
        this.#timer.unref();
      }
    }
  }

  /** The file's config; undefined when there is none; LastGoodError when it cannot be used. */
  async load(): Promise<LoadedConfig | undefined> {
    let bytes: Buffer;
    try {
      const st = await fs.stat(this.file);
      const max = this.#o.maxFileBytes ?? LAST_GOOD_DEFAULTS.maxFileBytes;
      if (st.size > max) throw lastGoodUnusable(this.file, `it is ${st.size} bytes, more than the ${max} such a file may take`);
      bytes = await fs.readFile(this.file);
    } catch (err) {
      if (err instanceof LastGoodError) throw err;
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw lastGoodUnusable(this.file, `it cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
    const loaded = await decodeLastGood(bytes, this.file, this.#o.node);
    const { message: _m, ...saved } = loaded;
    this.#saved = saved;
    return loaded;
  }

  close(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#pending = undefined;
  }
}

/**
 * Takes a loaded file as the state, through the same checks as a snapshot
 * from the controller: ConfigState.prepare, then StateUpdater.validate, then
 * commit. All of it or (LastGoodError) none of it, except that a local
 * workload whose netns is gone is taken and not enrolled. It is prepared on a
 * ConfigState of its own, so a snapshot the stream is still gathering in
 * parts is not disturbed; only a state that holds nothing yet is replaced
 * (a version from the controller always wins).
 */
export function applyLastGood(loaded: LoadedConfig, state: ConfigState, updater: StateUpdater, maxItems?: number): ApplyResult | undefined {
  if (state.version !== 0) return undefined;
  let staged;
  try {
    staged = new ConfigState({ maxItems }).prepare(loaded.message);
  } catch (err) {
    throw lastGoodUnusable(loaded.file, `version ${loaded.version} is refused: ${(err as Error).message}`);
  }
  if (!staged) throw lastGoodUnusable(loaded.file, `version ${loaded.version} is not a whole snapshot`);
  const problem = updater.validate(staged, { missingNetns: 'skip' });
  if (problem) throw lastGoodUnusable(loaded.file, `version ${loaded.version} is refused: ${problem}`);
  const result = state.commit(staged);
  updater.commit(result);
  return result;
}
