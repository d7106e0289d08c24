/**
 * Consumes a BPF ring buffer on the Node event loop: libuv watches the ring
 * buffer's epoll fd, and every record waiting when it turns readable arrives
 * in one call, decoded. No thread and no polling timer.
 */
import type { Codec } from './codec';
import { bpfError, call } from './errors';
import type { BpfMap } from './map';
import { native, type RawRingBuffer } from './native';

export interface RingBufferOptions<T> {
  /** Called with each batch of records, in order. */
  onRecords: (records: T[]) => void;
  /** Called when polling fails or a record has the wrong size. Default: throw. */
  onError?: (err: Error) => void;
  /** Do not keep the process alive for this ring buffer. */
  unref?: boolean;
}

export class RingBuffer<T> {
  readonly #raw: RawRingBuffer;
  readonly #codec: Codec<T>;
  readonly #mapName: string;
  readonly #onError: (err: Error) => void;

  constructor(map: BpfMap<unknown, unknown>, codec: Codec<T>, opts: RingBufferOptions<T>) {
    if (map.info.type !== 'ringbuf')
      throw bpfError('ringbuf_open', 'EINVAL', `map ${map.name} is a ${map.info.type} map, not a ringbuf`, 22);
    this.#codec = codec;
    this.#mapName = map.name;
    this.#onError =
      opts.onError ??
      ((err) => {
        throw err;
      });
    this.#raw = call(
      () =>
        new (native().RingBuffer)(map.raw, (err, records) => {
          if (err !== null) return this.#onError(bpfError('ringbuf_poll', 'EIO', `${this.#mapName}: ${err}`, 5));
          const decoded = this.#decode(records ?? []);
          if (decoded.length > 0) opts.onRecords(decoded);
        }),
    );
    if (opts.unref) this.#raw.unref();
  }

  #decode(records: Buffer[]): T[] {
    const out: T[] = [];
    for (const r of records) {
      if (r.length !== this.#codec.size) {
        this.#onError(
          bpfError('ringbuf_record', 'EINVAL', `${this.#mapName}: a ${r.length}-byte record does not match ${this.#codec.name} (${this.#codec.size} bytes): rebuild (npm run build)`, 22),
        );
        continue;
      }
      out.push(this.#codec.decode(r));
    }
    return out;
  }

  get closed(): boolean {
    return this.#raw.closed;
  }

  /** Reads whatever is waiting now, without going through onRecords. */
  consume(): T[] {
    return this.#decode(call(() => this.#raw.consume()));
  }

  ref(): void {
    this.#raw.ref();
  }

  unref(): void {
    this.#raw.unref();
  }

  /** Stops delivery and releases the ring buffer (safe twice). */
  close(): void {
    this.#raw.close();
  }
}
