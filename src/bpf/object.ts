/**
 * A BPF object file: open, configure (globals), load, then hand out maps and
 * attach programs. Order as libbpf-bootstrap: open, configure, load, attach,
 * pin; each failure names its step. close() releases the object's own fds;
 * maps and links handed out are separate owners and live on.
 */
import { call, bpfError } from './errors';
import { BpfMap, type MapCodecs } from './map';
import { Link } from './link';
import { native, type RawBtfStruct, type RawMapDecl, type RawObject, type RawProgramInfo } from './native';
import { ensurePinDir } from './system';

export type GlobalValue = number | bigint | boolean | Buffer;

export interface OpenOptions {
  /**
   * Directory on bpffs for maps declared with LIBBPF_PIN_BY_NAME: reused when
   * already pinned there, created and pinned otherwise. Without it nothing
   * is pinned and maps die with their last handle.
   */
  pinRoot?: string;
}

export interface LoadOptions extends OpenOptions {
  /** Values of `const volatile` globals, set before load. */
  globals?: Record<string, GlobalValue>;
}

export class BpfObject {
  readonly path: string;
  readonly pinRoot: string | undefined;
  readonly #raw: RawObject;

  /** @internal use openObject() or loadObject(). */
  constructor(objectPath: string, opts: OpenOptions = {}) {
    this.path = objectPath;
    this.pinRoot = opts.pinRoot;
    if (opts.pinRoot) ensurePinDir(opts.pinRoot);
    this.#raw = call(() => new (native().Object)(objectPath, opts.pinRoot ?? null));
  }

  /** @internal the addon handle, for Link.update(). */
  get raw(): RawObject {
    return this.#raw;
  }

  get loaded(): boolean {
    return this.#raw.loaded;
  }

  get closed(): boolean {
    return this.#raw.closed;
  }

  programs(): RawProgramInfo[] {
    return call(() => this.#raw.programs());
  }

  /** Maps declared in the object (internal ones such as .rodata included). */
  maps(): RawMapDecl[] {
    return call(() => this.#raw.maps());
  }

  /** Sets a global (usually `const volatile`) before load; integers sized from BTF. */
  setGlobal(name: string, value: GlobalValue): void {
    const info = call(() => this.#raw.globalInfo(name));
    if (info === null) throw bpfError('object_global', 'ENOENT', `no global variable ${name} in ${this.path}`, 2);
    let buf: Buffer;
    if (Buffer.isBuffer(value)) {
      buf = value;
    } else {
      buf = Buffer.alloc(info.size);
      const n = typeof value === 'boolean' ? BigInt(value ? 1 : 0) : BigInt(value);
      const max = 1n << BigInt(info.size * 8);
      if (info.size > 8 || n < -(max >> 1n) || n >= max)
        throw bpfError('object_global', 'ERANGE', `${name} is ${info.size} bytes; ${String(value)} does not fit`, 34);
      const u = n < 0n ? max + n : n;
      for (let i = 0; i < info.size; i++) buf[i] = Number((u >> BigInt(8 * i)) & 0xffn);
      if (this.#bigEndian) buf.reverse();
    }
    call(() => this.#raw.setGlobal(name, buf));
  }

  readonly #bigEndian = Buffer.from(new Uint16Array([1]).buffer)[0] === 0;

  /** Creates the maps and loads the programs into the kernel. */
  load(): void {
    call(() => this.#raw.load());
  }

  /** A struct's size and members as the object's BTF records them, or null. */
  btfStruct(name: string): RawBtfStruct | null {
    return call(() => this.#raw.btfStruct(name));
  }

  /** An enum's constants as the object's BTF records them, or null. */
  btfEnum(name: string): Record<string, number> | null {
    return call(() => this.#raw.btfEnum(name));
  }

  /** A handle on one of the object's maps (a separate owner: close it too). */
  map<K = Buffer, V = Buffer>(name: string, codecs: MapCodecs<K, V> = {}): BpfMap<K, V> {
    return new BpfMap(call(() => this.#raw.openMap(name)), codecs);
  }

  /** Attaches `program` to a cgroup v2 directory as a bpf_link. */
  attachCgroup(program: string, cgroupPath: string): Link {
    return new Link(call(() => this.#raw.attachCgroup(program, cgroupPath)));
  }

  /**
   * Attaches an sk_skb or sk_msg `program` to the object's sockmap `map`. The
   * map holds it from then on (no link): it is detached when the map is freed.
   */
  attachToMap(program: string, map: string): void {
    call(() => this.#raw.attachToMap(program, map));
  }

  /** Releases the object's program and map fds (safe twice). Pins, links and maps handed out stay. */
  close(): void {
    this.#raw.close();
  }
}

/** Opens (parses) an object without loading it, to set globals first. */
export function openObject(objectPath: string, opts: OpenOptions = {}): BpfObject {
  return new BpfObject(objectPath, opts);
}

/** Opens, configures and loads an object; on any failure nothing stays open. */
export function loadObject(objectPath: string, opts: LoadOptions = {}): BpfObject {
  const obj = new BpfObject(objectPath, opts);
  try {
    for (const [name, value] of Object.entries(opts.globals ?? {})) obj.setGlobal(name, value);
    obj.load();
    return obj;
  } catch (err) {
    obj.close();
    throw err;
  }
}
