/**
 * Fixed-layout codecs for the C structs in bpf/include/nodemesh_abi.h. One
 * declaration per struct (src/bpf/abi.ts); the field order is the C order.
 * Layouts must be hole-free, as the header promises: a field at an offset its
 * alignment does not allow, or a size that needs tail padding, is refused
 * when the codec is declared, not when a map is read.
 */
import * as net from 'node:net';
import * as os from 'node:os';

/** Field types. Integers are host byte order, as BPF writes them. */
export type FieldType =
  | 'u8'
  | 'u16'
  | 'u32'
  | 'u64'
  | 'be16' // network order, decoded to a number
  | 'ipv4' // 4 bytes network order <-> "198.18.0.1"
  | 'ipv6' // 16 bytes network order <-> "fd00::1"
  | 'ip' // 16 bytes, IPv4 as IPv4-mapped IPv6 <-> "198.18.0.1" or "fd00::1"
  | `bytes${number}` // raw bytes <-> Buffer (copied)
  | `pad${number}`; // explicit padding: zero on encode, skipped on decode

type ValueOf<F> = F extends 'u64'
  ? bigint
  : F extends 'ipv4' | 'ipv6' | 'ip'
    ? string
    : F extends `bytes${number}`
      ? Buffer
      : number;

/** The decoded shape of a struct spec: every field but padding. */
export type StructOf<S extends Record<string, FieldType>> = {
  [K in keyof S as S[K] extends `pad${number}` ? never : K]: ValueOf<S[K]>;
};

export interface FieldLayout {
  readonly name: string;
  readonly type: FieldType;
  readonly offset: number;
  readonly size: number;
}

export interface Codec<T> {
  /** The C struct's name (without `struct`), or a description for scalars. */
  readonly name: string;
  readonly size: number;
  readonly fields: readonly FieldLayout[];
  /** Encodes into `out` at `offset` (a new zeroed Buffer when omitted). */
  encode(value: T, out?: Buffer, offset?: number): Buffer;
  decode(buf: Buffer, offset?: number): T;
}

const LE = os.endianness() === 'LE';

interface FieldCodec {
  size: number;
  align: number;
  read(buf: Buffer, off: number): unknown;
  write(buf: Buffer, off: number, v: unknown): void;
}

function ipv4Write(buf: Buffer, off: number, v: unknown): void {
  const s = String(v);
  const parts = s.split('.');
  if (parts.length !== 4 || !net.isIPv4(s)) throw new TypeError(`not an IPv4 address: ${s}`);
  for (let i = 0; i < 4; i++) buf[off + i] = Number(parts[i]);
}

function ipv4Read(buf: Buffer, off: number): string {
  return `${buf[off]}.${buf[off + 1]}.${buf[off + 2]}.${buf[off + 3]}`;
}

/** Expands an IPv6 address (with :: and an optional dotted tail) to 8 groups. */
function ipv6Groups(s: string): number[] {
  if (!net.isIPv6(s)) throw new TypeError(`not an IPv6 address: ${s}`);
  let text = s.split('%')[0]!;
  const lastColon = text.lastIndexOf(':');
  const last = text.slice(lastColon + 1);
  if (last.includes('.')) {
    const b = last.split('.').map(Number);
    text = `${text.slice(0, lastColon + 1)}${((b[0]! << 8) | b[1]!).toString(16)}:${((b[2]! << 8) | b[3]!).toString(16)}`;
  }
  const parse = (p: string): number[] => (p === '' ? [] : p.split(':').map((x) => parseInt(x, 16)));
  const dbl = text.indexOf('::');
  if (dbl < 0) return parse(text);
  const head = parse(text.slice(0, dbl));
  const rest = parse(text.slice(dbl + 2));
  return [...head, ...new Array<number>(8 - head.length - rest.length).fill(0), ...rest];
}

function ipv6Write(buf: Buffer, off: number, v: unknown): void {
  const g = ipv6Groups(String(v));
  for (let i = 0; i < 8; i++) buf.writeUInt16BE(g[i]!, off + 2 * i);
}

function ipv6Read(buf: Buffer, off: number): string {
  const g: number[] = [];
  for (let i = 0; i < 8; i++) g.push(buf.readUInt16BE(off + 2 * i));
  // RFC 5952: compress the longest run (>1) of zero groups.
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = g.map((x) => x.toString(16));
  if (best < 0) return hex.join(':');
  return `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLen).join(':')}`;
}

function isMapped(buf: Buffer, off: number): boolean {
  for (let i = 0; i < 10; i++) if (buf[off + i] !== 0) return false;
  return buf[off + 10] === 0xff && buf[off + 11] === 0xff;
}

function ipRead(buf: Buffer, off: number): string {
  return isMapped(buf, off) ? ipv4Read(buf, off + 12) : ipv6Read(buf, off);
}

function ipWrite(buf: Buffer, off: number, v: unknown): void {
  const s = String(v);
  if (net.isIPv4(s)) {
    buf.fill(0, off, off + 10);
    buf[off + 10] = 0xff;
    buf[off + 11] = 0xff;
    ipv4Write(buf, off + 12, s);
  } else {
    ipv6Write(buf, off, s);
  }
}

function fieldCodec(type: FieldType): FieldCodec {
  switch (type) {
    case 'u8':
      return { size: 1, align: 1, read: (b, o) => b[o], write: (b, o, v) => void b.writeUInt8(Number(v), o) };
    case 'u16':
      return LE
        ? { size: 2, align: 2, read: (b, o) => b.readUInt16LE(o), write: (b, o, v) => void b.writeUInt16LE(Number(v), o) }
        : { size: 2, align: 2, read: (b, o) => b.readUInt16BE(o), write: (b, o, v) => void b.writeUInt16BE(Number(v), o) };
    case 'be16':
      return { size: 2, align: 2, read: (b, o) => b.readUInt16BE(o), write: (b, o, v) => void b.writeUInt16BE(Number(v), o) };
    case 'u32':
      return LE
        ? { size: 4, align: 4, read: (b, o) => b.readUInt32LE(o), write: (b, o, v) => void b.writeUInt32LE(Number(v), o) }
        : { size: 4, align: 4, read: (b, o) => b.readUInt32BE(o), write: (b, o, v) => void b.writeUInt32BE(Number(v), o) };
    case 'u64':
      return LE
        ? { size: 8, align: 8, read: (b, o) => b.readBigUInt64LE(o), write: (b, o, v) => void b.writeBigUInt64LE(BigInt(v as bigint), o) }
        : { size: 8, align: 8, read: (b, o) => b.readBigUInt64BE(o), write: (b, o, v) => void b.writeBigUInt64BE(BigInt(v as bigint), o) };
    case 'ipv4':
      // A __u32 in C.
      return { size: 4, align: 4, read: ipv4Read, write: ipv4Write };
    case 'ipv6':
      // __u32[4] in C.
      return { size: 16, align: 4, read: ipv6Read, write: ipv6Write };
    case 'ip':
      // __u8[16] in C.
      return { size: 16, align: 1, read: ipRead, write: ipWrite };
    default: {
      const m = /^(bytes|pad)(\d+)$/.exec(type);
      if (!m) throw new TypeError(`unknown field type ${type}`);
      const n = Number(m[2]);
      if (m[1] === 'pad') return { size: n, align: 1, read: () => undefined, write: () => undefined };
      return {
        size: n,
        align: 1,
        read: (b, o) => Buffer.from(b.subarray(o, o + n)),
        write: (b, o, v) => {
          const src = v as Buffer;
          if (!Buffer.isBuffer(src) || src.length !== n) throw new TypeError(`expected a ${n}-byte Buffer`);
          src.copy(b, o);
        },
      };
    }
  }
}

/**
 * Declares the codec of one C struct. `spec` lists fields in C order:
 * `struct('nm_key', { ip: 'ipv4', port: 'u16', _pad: 'pad2' })`.
 */
export function struct<const S extends Record<string, FieldType>>(name: string, spec: S): Codec<StructOf<S>> {
  const layout: FieldLayout[] = [];
  const names: string[] = [];
  const codecs: FieldCodec[] = [];
  const offsets: number[] = [];
  let off = 0;
  let maxAlign = 1;
  for (const [field, type] of Object.entries(spec)) {
    const fc = fieldCodec(type);
    if (off % fc.align !== 0)
      throw new TypeError(`struct ${name}: field ${field} (${type}) at offset ${off} is not ${fc.align}-byte aligned: add explicit padding before it`);
    layout.push(Object.freeze({ name: field, type, offset: off, size: fc.size }));
    if (!type.startsWith('pad')) {
      names.push(field);
      codecs.push(fc);
      offsets.push(off);
    }
    off += fc.size;
    maxAlign = Math.max(maxAlign, fc.align);
  }
  if (off % maxAlign !== 0)
    throw new TypeError(`struct ${name}: size ${off} is not a multiple of its alignment ${maxAlign}: add explicit tail padding`);
  const size = off;
  const count = names.length;
  return Object.freeze({
    name,
    size,
    fields: Object.freeze(layout),
    encode(value: StructOf<S>, out?: Buffer, at = 0): Buffer {
      const buf = out ?? Buffer.alloc(size);
      if (out) buf.fill(0, at, at + size);
      const v = value as Record<string, unknown>;
      for (let i = 0; i < count; i++) {
        const x = v[names[i]!];
        if (x === undefined) throw new TypeError(`struct ${name}: field ${names[i]} is missing`);
        codecs[i]!.write(buf, at + offsets[i]!, x);
      }
      return buf;
    },
    decode(buf: Buffer, at = 0): StructOf<S> {
      if (buf.length - at < size) throw new RangeError(`struct ${name}: need ${size} bytes, got ${buf.length - at}`);
      const o: Record<string, unknown> = {};
      for (let i = 0; i < count; i++) o[names[i]!] = codecs[i]!.read(buf, at + offsets[i]!);
      return o as StructOf<S>;
    },
  });
}

/** A lone scalar (a __u32 key, a __u64 counter). */
export function scalar<const F extends 'u8' | 'u16' | 'u32' | 'u64'>(type: F): Codec<ValueOf<F>> {
  const fc = fieldCodec(type);
  return Object.freeze({
    name: type,
    size: fc.size,
    fields: Object.freeze([Object.freeze({ name: 'value', type, offset: 0, size: fc.size })]),
    encode(value: ValueOf<F>, out?: Buffer, at = 0): Buffer {
      const buf = out ?? Buffer.alloc(fc.size);
      fc.write(buf, at, value);
      return buf;
    },
    decode(buf: Buffer, at = 0): ValueOf<F> {
      if (buf.length - at < fc.size) throw new RangeError(`${type}: need ${fc.size} bytes, got ${buf.length - at}`);
      return fc.read(buf, at) as ValueOf<F>;
    },
  });
}

/** Raw bytes of a fixed size: the default codec of a map opened without one. */
export function bytes(size: number): Codec<Buffer> {
  return Object.freeze({
    name: `bytes${size}`,
    size,
    fields: Object.freeze([]),
    encode(value: Buffer, out?: Buffer, at = 0): Buffer {
      if (!Buffer.isBuffer(value) || value.length !== size) throw new TypeError(`expected a ${size}-byte Buffer`);
      if (!out) return value;
      value.copy(out, at);
      return out;
    },
    decode(buf: Buffer, at = 0): Buffer {
      return at === 0 && buf.length === size ? buf : Buffer.from(buf.subarray(at, at + size));
    },
  });
}
