/**
 * A bpf_link: a program attached to a hook (here, a cgroup). Closing an
 * unpinned link detaches its program; a pinned one stays attached until
 * detach(), so redirection survives the process that made it.
 */
import * as path from 'node:path';

import { call } from './errors';
import { native, type RawLink, type RawLinkInfo, type RawObject } from './native';
import { ensurePinDir } from './system';

export type LinkInfo = Readonly<RawLinkInfo>;

export class Link {
  readonly #raw: RawLink;

  /** @internal use BpfObject.attachCgroup() or Link.openPinned(). */
  constructor(raw: RawLink) {
    this.#raw = raw;
  }

  /** Reopens a link pinned on bpffs (for example by an earlier run). */
  static openPinned(pinPath: string): Link {
    return new Link(call(() => native().Link.openPinned(pinPath)));
  }

  get closed(): boolean {
    return this.#raw.closed;
  }

  get pinPath(): string | null {
    return this.#raw.pinPath;
  }

  /** Kernel ids, attach type, cgroup id; `attached` turns false after detach. */
  info(): LinkInfo {
    return call(() => this.#raw.info());
  }

  /** Pins the link at `pinPath` (its directory is created on bpffs). */
  pin(pinPath: string): void {
    ensurePinDir(path.dirname(pinPath));
    call(() => this.#raw.pin(pinPath));
  }

  /** Removes the pin; false when there was none. */
  unpin(): boolean {
    return call(() => this.#raw.unpin());
  }

  /**
   * Replaces the attached program with `program` of `object` (a loaded
   * BpfObject), atomically. Typed by what it reads, so link.ts and object.ts
   * do not import each other.
   */
  update(object: { readonly raw: RawObject }, program: string): void {
    call(() => this.#raw.update(object.raw, program));
  }

  /** Detaches the program now, pinned or not. The handle stays open until close(). */
  detach(): void {
    call(() => this.#raw.detach());
  }

  /** Releases this handle (safe twice); an unpinned link detaches. */
  close(): void {
    this.#raw.close();
  }
}
