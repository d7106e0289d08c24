/**
 * A BPF map with typed keys and values. Sizes are checked here, before the
 * addon runs; codecs are checked against the map's real sizes when opened.
 */
import { bytes, type Codec } from './codec';
import { bpfError, call } from './errors';
import { native, type RawMap, type RawMapInfo } from './native';

export type UpdateFlag = 'any' | 'noexist' | 'exist';
const FLAGS: Record<UpdateFlag, number> = { any: 0, noexist: 1, exist: 2 };

export type MapInfo = Readonly<RawMapInfo>;

export interface MapCodecs<K, V> {
  key?: Codec<K>;
  value?: Codec<V>;
}

export class BpfMap<K = Buffer, V = Buffer> {
  readonly info: MapInfo;
  readonly key: Codec<K>;
  readonly value: Codec<V>;
  readonly #raw: RawMap;
  /** Per-CPU value stride: the value size rounded up to 8 bytes. */
  readonly #stride: number;

  /** @internal use BpfObject.map() or BpfMap.openPinned(). */
  constructor(raw: RawMap, codecs: MapCodecs<K, V> = {}) {
    this.#raw = raw;
    this.info = Object.freeze(call(() => raw.info()));
    this.key = codecs.key ?? (bytes(this.info.keySize) as unknown as Codec<K>);
    this.value = codecs.value ?? (bytes(this.info.valueSize) as unknown as Codec<V>);
    this.#stride = Math.ceil(this.info.valueSize / 8) * 8;
    if (this.key.size !== this.info.keySize || this.value.size !== this.info.valueSize) {
      raw.close();
      throw bpfError(
        'map_open',
        'EINVAL',
        `map ${this.info.name} has ${this.info.keySize}-byte keys and ${this.info.valueSize}-byte values, but the codecs are ${this.key.name} (${this.key.size} bytes) and ${this.value.name} (${this.value.size} bytes): rebuild (npm run build) so bpf/ and src/bpf/abi.ts agree`,
        22,
      );
    }
  }

  /** Opens a map pinned on bpffs. */
  static openPinned<K = Buffer, V = Buffer>(pinPath: string, codecs: MapCodecs<K, V> = {}): BpfMap<K, V> {
    return new BpfMap(call(() => native().Map.openPinned(pinPath)), codecs);
  }

  get name(): string {
    return this.info.name;
  }

  get closed(): boolean {
    return this.#raw.closed;
  }

  get pinPath(): string | null {
    return this.#raw.pinPath;
  }

  /** @internal the addon handle, for RingBuffer. */
  get raw(): RawMap {
    return this.#raw;
  }

  #encodeKey(key: K): Buffer {
    return this.#encode(this.key, key, 'map_key', 'keys', this.info.keySize);
  }

  #encodeValue(value: V): Buffer {
    return this.#encode(this.value, value, 'map_value', 'values', this.info.valueSize);
  }

  /** Codec failures (wrong Buffer size, bad address) become BpfErrors naming the map. */
  #encode<T>(codec: Codec<T>, x: T, op: string, what: string, size: number): Buffer {
    if (Buffer.isBuffer(x) && x.length !== size)
      throw bpfError(op, 'EINVAL', `map ${this.name} has ${size}-byte ${what}, got ${x.length} bytes`, 22);
    try {
      return codec.encode(x);
    } catch (err) {
      throw bpfError(op, 'EINVAL', `map ${this.name}: ${err instanceof Error ? err.message : String(err)}`, 22);
    }
  }

  #notPerCpu(op: string): void {
    if (this.info.perCpu)
      throw bpfError(op, 'EINVAL', `map ${this.name} is per-CPU (${this.info.type}): use getPerCpu(), getSum() or setPerCpu()`, 22);
  }

  /** The value under `key`, or undefined. */
  get(key: K): V | undefined {
    this.#notPerCpu('map_lookup');
    const v = call(() => this.#raw.lookup(this.#encodeKey(key)));
    return v === null ? undefined : this.value.decode(v);
  }

  has(key: K): boolean {
    return call(() => this.#raw.lookup(this.#encodeKey(key))) !== null;
  }

  /** Reads `key` into a caller-owned buffer without allocating; false when absent. */
  getInto(key: Buffer, out: Buffer): boolean {
    return call(() => this.#raw.lookupInto(key, out));
  }

  /** Removes `key` and returns what it held (hash and LRU maps; queues). */
  take(key: K): V | undefined {
    this.#notPerCpu('map_lookup_and_delete');
    const v = call(() => this.#raw.lookupAndDelete(this.#encodeKey(key)));
    return v === null ? undefined : this.value.decode(v);
  }

  set(key: K, value: V, flag: UpdateFlag = 'any'): void {
    this.#notPerCpu('map_update');
    const k = this.#encodeKey(key);
    const v = this.#encodeValue(value);
    call(() => this.#raw.update(k, v, FLAGS[flag]));
  }

  /** Deletes `key`; false when it was not there. */
  delete(key: K): boolean {
    return call(() => this.#raw.delete(this.#encodeKey(key)));
  }

  /** Per-CPU maps: one value per possible CPU. */
  getPerCpu(key: K): V[] | undefined {
    const buf = call(() => this.#raw.lookup(this.#encodeKey(key)));
    return buf === null ? undefined : this.#splitPerCpu(buf, 0);
  }

  /** Per-CPU maps: the values of all CPUs summed field by field. */
  getSum(key: K): V | undefined {
    const all = this.getPerCpu(key);
    return all === undefined ? undefined : sumValues(all);
  }

  /** Per-CPU maps: sets every CPU's value (one value, or one per possible CPU). */
  setPerCpu(key: K, values: V | V[], flag: UpdateFlag = 'any'): void {
    const n = this.info.possibleCpus;
    const list = Array.isArray(values) ? values : new Array<V>(n).fill(values);
    if (list.length !== n) throw bpfError('map_update', 'EINVAL', `map ${this.name} needs ${n} per-CPU values, got ${list.length}`, 22);
    const buf = Buffer.alloc(this.info.valueBufferSize);
    list.forEach((v, i) => this.value.encode(v, buf, i * this.#stride));
    call(() => this.#raw.update(this.#encodeKey(key), buf, FLAGS[flag]));
  }

  #splitPerCpu(buf: Buffer, at: number): V[] {
    const out: V[] = [];
    for (let i = 0; i < this.info.possibleCpus; i++) out.push(this.value.decode(buf, at + i * this.#stride));
    return out;
  }

  /** Keys one by one (bpf_map_get_next_key). */
  *keys(): IterableIterator<K> {
    let cur: Buffer | null = null;
    for (;;) {
      const prev: Buffer | null = cur;
      const next: Buffer | null = call(() => this.#raw.nextKey(prev));
      if (next === null) return;
      yield this.key.decode(next);
      cur = next;
    }
  }

  /**
   * Every entry, read in kernel batches where the map type has them. Per-CPU
   * maps give the sum over CPUs.
   */
  entries(): Array<[K, V]> {
    const d = call(() => this.#raw.dump());
    const ks = this.info.keySize;
    const vs = this.info.valueBufferSize;
    const out: Array<[K, V]> = [];
    for (let i = 0; i < d.count; i++) {
      const k = this.key.decode(d.keys, i * ks);
      const v = this.info.perCpu ? sumValues(this.#splitPerCpu(d.values, i * vs)) : this.value.decode(d.values, i * vs);
      out.push([k, v]);
    }
    return out;
  }

  /** Number of entries now (walks the map). */
  count(): number {
    return call(() => this.#raw.dump()).count;
  }

  /** Sets many entries in one kernel batch where the map type has it. */
  setMany(entries: Iterable<[K, V]>, flag: UpdateFlag = 'any'): number {
    this.#notPerCpu('map_update_batch');
    const list = [...entries];
    const keys = Buffer.alloc(list.length * this.info.keySize);
    const values = Buffer.alloc(list.length * this.info.valueSize);
    list.forEach(([k, v], i) => {
      this.key.encode(k, keys, i * this.info.keySize);
      this.value.encode(v, values, i * this.info.valueSize);
    });
    return call(() => this.#raw.updateBatch(keys, values, list.length, FLAGS[flag]));
  }

  /** Deletes many keys; returns how many were there. */
  deleteMany(keys: Iterable<K>): number {
    const list = [...keys];
    const buf = Buffer.alloc(list.length * this.info.keySize);
    list.forEach((k, i) => this.key.encode(k, buf, i * this.info.keySize));
    return call(() => this.#raw.deleteBatch(buf, list.length));
  }

  /** Deletes every entry (hash-like maps). */
  clear(): number {
    const d = call(() => this.#raw.dump());
    return d.count === 0 ? 0 : call(() => this.#raw.deleteBatch(d.keys, d.count));
  }

  pin(pinPath: string): void {
    call(() => this.#raw.pin(pinPath));
  }

  /** Removes this map's pin; false when it had none. */
  unpin(): boolean {
    return call(() => this.#raw.unpin());
  }

  /** Releases this handle (safe twice). The map lives on while pinned or used. */
  close(): void {
    this.#raw.close();
  }
}

/** Sums decoded values: numbers and bigints added, fields of structs added one by one. */
export function sumValues<V>(values: V[]): V {
  if (values.length === 0) throw new RangeError('no values to sum');
  const first = values[0] as unknown;
  if (typeof first === 'bigint') return values.reduce((a, b) => ((a as bigint) + (b as bigint)) as V);
  if (typeof first === 'number') return values.reduce((a, b) => ((a as number) + (b as number)) as V);
  if (first && typeof first === 'object' && !Buffer.isBuffer(first)) {
    const out: Record<string, unknown> = { ...(first as Record<string, unknown>) };
    for (const v of values.slice(1)) {
      for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
        if (typeof x === 'bigint') out[k] = (out[k] as bigint) + x;
        else if (typeof x === 'number') out[k] = (out[k] as number) + x;
      }
    }
    return out as V;
  }
  throw new TypeError('per-CPU values of this codec cannot be summed');
}
