/**
 * The raw addon. Only src/bpf/ imports this file; the rest of nodemesh uses
 * the typed classes in this folder, which check arguments first.
 */
import { ADDON_PATH } from '../paths';
import { BpfError } from './errors';

export interface RawProgramInfo {
  name: string;
  section: string;
  type: string;
  attachType: string;
  loaded: boolean;
}

export interface RawMapDecl {
  name: string;
  type: string;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  pinPath?: string;
  pinned: boolean;
  internal: boolean;
}

export interface RawBtfStruct {
  size: number;
  members: { name: string; offset: number; size: number }[];
}

export interface RawObject {
  readonly loaded: boolean;
  readonly closed: boolean;
  load(): void;
  close(): void;
  programs(): RawProgramInfo[];
  maps(): RawMapDecl[];
  globalInfo(name: string): { size: number; offset: number; section: string } | null;
  setGlobal(name: string, value: Buffer): void;
  btfStruct(name: string): RawBtfStruct | null;
  btfEnum(name: string): Record<string, number> | null;
  openMap(name: string): RawMap;
  attachCgroup(program: string, cgroupPath: string): RawLink;
  attachToMap(program: string, map: string): void;
}

export interface RawMapInfo {
  id: number;
  name: string;
  type: string;
  keySize: number;
  valueSize: number;
  valueBufferSize: number;
  maxEntries: number;
  flags: number;
  perCpu: boolean;
  possibleCpus: number;
}

export interface RawMap {
  readonly closed: boolean;
  readonly pinPath: string | null;
  close(): void;
  info(): RawMapInfo;
  lookup(key: Buffer): Buffer | null;
  lookupInto(key: Buffer, out: Buffer): boolean;
  lookupAndDelete(key: Buffer): Buffer | null;
  update(key: Buffer, value: Buffer, flags: number): void;
  delete(key: Buffer): boolean;
  nextKey(key: Buffer | null): Buffer | null;
  dump(): { keys: Buffer; values: Buffer; count: number; batched: boolean };
  updateBatch(keys: Buffer, values: Buffer, count: number, flags: number): number;
  deleteBatch(keys: Buffer, count: number): number;
  pin(path: string): void;
  unpin(): boolean;
}

export interface RawLinkInfo {
  id: number;
  progId: number;
  type: string;
  attachType?: string;
  cgroupId?: bigint;
  attached?: boolean;
}

export interface RawLink {
  readonly closed: boolean;
  readonly pinPath: string | null;
  close(): void;
  info(): RawLinkInfo;
  pin(path: string): void;
  unpin(): boolean;
  update(object: RawObject, program: string): void;
  detach(): void;
}

export interface RawRingBuffer {
  readonly closed: boolean;
  close(): void;
  consume(): Buffer[];
  ref(): void;
  unref(): void;
}

export interface Addon {
  Object: new (path: string, pinRoot: string | null) => RawObject;
  Map: { openPinned(path: string): RawMap };
  Link: { openPinned(path: string): RawLink };
  RingBuffer: new (map: RawMap, cb: (err: string | null, records: Buffer[] | null) => void) => RawRingBuffer;
  cgroupId(path: string): bigint;
  socketCookie(fd: number): bigint;
  tcpQueued(fd: number): bigint;
  kickReceive(fd: number): void;
  recvInto(fd: number, buf: Buffer): number;
  netnsCookie(path: string): Promise<bigint>;
  transparentSocket(netnsFd: number, family: 4 | 6, source: string, mark: number): number;
  netnsDelivery(path: string, on: boolean, mark: number, mask: number, table: number, priority: number): Promise<void>;
  probeProgType(name: string): number;
  probeMapType(name: string): number;
  pinnedKind(path: string): 'map' | 'prog' | 'link' | '' | null;
  bpfAccess(): number;
  libbpfVersion(): string;
  numPossibleCpus(): number;
  /** malloc_trim(0): whether malloc gave memory back to the kernel. */
  mallocTrim(): boolean;
}

let addon: Addon | undefined;
let loadError: BpfError | undefined;

/** The addon, loaded on first use. Throws a BpfError saying how to build it. */
export function native(): Addon {
  if (addon) return addon;
  if (loadError) throw loadError;
  try {
    addon = require(ADDON_PATH) as Addon;
    return addon;
  } catch (err) {
    const reason = err instanceof Error ? err.message.split('\n')[0] : String(err);
    loadError = new BpfError(
      'addon_load',
      'NM_ERR_BPF_ADDON',
      0,
      `bpf: addon_load: cannot load the libbpf addon ${ADDON_PATH} (${reason}): build it with \`npm run build\` (needs libbpf-dev, cmake, a C++ compiler)`,
      { cause: err },
    );
    throw loadError;
  }
}

/** The addon if it loads, else undefined (for reports that must not throw). */
export function tryNative(): Addon | undefined {
  try {
    return native();
  } catch {
    return undefined;
  }
}
