/**
 * Config push: one session per node. On hello a node gets a snapshot of its
 * slice, or, when the controller still remembers what it sent that node at
 * the version the node names, only the difference. After each store write the
 * registry says which items changed; every connected node whose slice they
 * touch gets one delta. Nodes ACK or NACK each version.
 *
 * Every snapshot and delta goes out in parts of at most `partBytes` (and well
 * under the node's own receive limit), at most `MAX_IN_FLIGHT` parts per node
 * written and not yet flushed: a slow or stuck node holds a bounded amount of
 * the controller's memory, and one that falls too far behind gets a fresh
 * snapshot instead of an ever longer queue. An item too large for the node's
 * limit cannot be sent at all: its stream ends with RESOURCE_EXHAUSTED naming
 * the item, the node's status says so, and the node backs off.
 *
 * Transport-free: a session talks through a NodeChannel (the gRPC stream in
 * api/, a fake in tests of this file's logic).
 */
import { parseIp } from '../../api/address';
import { formatBytes, MiB } from '../../api/limits';
import { encodePart } from '../../api/config-wire';
import type { ConfigMessage, NodeStatusMessage } from '../../api/proto';
import { isScopedKey, wants, type ItemState, type Registry } from '../registry';
import { NodeStreamRecords, type NodeStreamRecord, type StreamEndReason } from './node-streams';

export interface NodeChannel {
  readonly peer: string;
  /** Serial of the certificate the stream authenticated with. */
  readonly serial?: string;
  /** The largest message the node takes (its hello's max_message_bytes). */
  readonly maxMessageBytes?: number;
  /** Writes one message; `flushed` runs once it has left (the next part waits for it). */
  send(msg: OutgoingMessage, flushed?: () => void): void;
  /**
   * Ends the stream. `denied`: as PERMISSION_DENIED (the node lost its right to a config);
   * `exhausted`: as RESOURCE_EXHAUSTED (its config cannot be sent within its limits).
   * `cause`: the reason class the end is counted under (default: revoked when denied,
   * too-large when exhausted, else controller-closed).
   */
  close(reason: string, status?: 'denied' | 'exhausted', cause?: StreamEndReason): void;
}

/** A part of a snapshot or delta, serialized (`type` names it), or another message to serialize. */
export type OutgoingMessage = { type: 'snapshot' | 'delta'; encoded: Buffer; message?: undefined } | { type?: undefined; encoded?: undefined; message: ConfigMessage };

export interface PushEvents {
  /** A node acknowledged `version`, `seconds` after the write that made it. */
  acked?(node: string, version: number, seconds: number): void;
  nacked?(node: string, version: number, reason: string): void;
  connected?(count: number): void;
  /** A node's queue grew past its bound: it gets a fresh snapshot instead. */
  resynced?(node: string, queuedItems: number): void;
  /** A node's config could not be sent within its limits; its stream ended. */
  refused?(node: string, reason: string): void;
}

export interface HubOptions {
  /** Target size of one part (default 256 KiB); a part never exceeds a quarter of the node's limit either. */
  partBytes?: number;
}

/** gRPC's default receive limit: what a node that does not say takes. */
export const DEFAULT_NODE_MESSAGE_BYTES = 4 * MiB;
const DEFAULT_PART_BYTES = 256 * 1024;
/** Parts written to one node's stream and not yet flushed. */
const MAX_IN_FLIGHT = 2;
/** Room in a message for everything but its items (version, flags, framing). */
const MESSAGE_OVERHEAD = 1024;

/** One snapshot or delta on its way to a node, cut into parts as it goes. */
interface Outgoing {
  type: 'snapshot' | 'delta';
  version: number;
  from: number;
  items: readonly ItemState[];
  removals: readonly string[];
  /** Next item and removal to send. */
  at: number;
  removedAt: number;
  part: number;
}

interface NodeState {
  node: string;
  /** Scoped items (policies) this node was sent: key -> item version. Items for every node are tracked by `sentSeq`. */
  scoped: Map<string, number>;
  /** Every change of the registry up to this sequence number is queued to the node. */
  sentSeq: number;
  sentVersion: number;
  ackedVersion: number;
  nackedVersion: number;
  nackReason: string;
  lastSeen: number;
  proxyVersion: string;
  addresses: string[];
  /** 'fail-closed' or 'fail-open', as its hello said; '' when it did not say. */
  failMode: string;
  channel: NodeChannel | null;
  /** version -> when its write was committed (ms), until ACKed. */
  pending: Map<number, number>;
  /**
   * The node refused a version and holds an older one, which deltas cannot
   * start from: its next config is a whole snapshot.
   */
  resync: boolean;
  queue: Outgoing[];
  /** Items and removals in `queue` not yet sent. */
  queued: number;
  inFlight: number;
}

export class ConfigHub {
  readonly #registry: Registry;
  readonly #events: PushEvents;
  readonly #partBytes: number;
  readonly #nodes = new Map<string, NodeState>();
  /** How each node's streams went; kept apart from NodeState, which a revoke drops. */
  readonly #streams = new NodeStreamRecords();
  /** Commit time of each recent store version, for push latency. */
  readonly #commitTimes = new Map<number, number>();
  #version = 0;

  constructor(registry: Registry, events: PushEvents = {}, version = 0, opts: HubOptions = {}) {
    this.#registry = registry;
    this.#events = events;
    this.#version = version;
    this.#partBytes = opts.partBytes ?? DEFAULT_PART_BYTES;
  }

  get connectedCount(): number {
    let n = 0;
    for (const s of this.#nodes.values()) if (s.channel) n++;
    return n;
  }

  /** Items that changed outside a store write (the revocation list): pushed at the current version. */
  refresh(dirty: ReadonlySet<string>): void {
    this.changed(dirty, this.#version);
  }

  /** Ends the node's stream as denied; its state goes, so a later stream starts from a snapshot. */
  revoke(node: string, reason: string): void {
    const s = this.#nodes.get(node);
    if (!s) return;
    s.channel?.close(reason, 'denied', 'revoked');
    s.channel = null;
    this.#nodes.delete(node);
    this.#events.connected?.(this.connectedCount);
  }

  /** After the registry applied a write at `version`: push what changed. */
  changed(dirty: ReadonlySet<string>, version: number, committedAt = Date.now()): void {
    this.#version = version;
    if (dirty.size === 0) return;
    this.#commitTimes.set(version, committedAt);
    if (this.#commitTimes.size > 10_000) this.#commitTimes.delete(this.#commitTimes.keys().next().value!);
    // What goes to every node is worked out once.
    const items = this.#registry.items;
    const upserts: ItemState[] = [];
    const removals: string[] = [];
    const scoped: string[] = [];
    for (const key of dirty) {
      if (isScopedKey(key)) scoped.push(key);
      else {
        const item = items.get(key);
        if (item) upserts.push(item);
        else removals.push(key);
      }
    }
    const seq = this.#registry.seq;
    for (const s of this.#nodes.values()) {
      if (!s.channel) continue;
      if (s.resync) {
        this.#queueSnapshot(s);
        continue;
      }
      let ups: ItemState[] = upserts;
      let rms: string[] = removals;
      if (scoped.length) {
        ups = [...upserts];
        rms = [...removals];
        for (const key of scoped) this.#diffScoped(s, key, ups, rms);
      }
      s.sentSeq = seq;
      if (ups.length || rms.length) this.#queueDelta(s, ups, rms, committedAt);
    }
  }

  #diffScoped(s: NodeState, key: string, upserts: ItemState[], removals: string[]): void {
    const item = this.#registry.items.get(key);
    if (item && wants(item, s.node)) {
      if (s.scoped.get(key) !== item.version) {
        upserts.push(item);
        s.scoped.set(key, item.version);
      }
    } else if (s.scoped.delete(key)) {
      removals.push(key);
    }
  }

  #queueDelta(s: NodeState, items: ItemState[], removals: string[], committedAt: number): void {
    const from = s.sentVersion;
    s.sentVersion = this.#version;
    s.pending.set(this.#version, committedAt);
    this.#enqueue(s, { type: 'delta', version: this.#version, from, items, removals, at: 0, removedAt: 0, part: 0 });
  }

  /** Everything the node should hold, replacing what it has. */
  #queueSnapshot(s: NodeState, committedAt = Date.now()): void {
    s.scoped.clear();
    s.resync = false;
    const items: ItemState[] = [];
    for (const item of this.#registry.items.values()) {
      if (!wants(item, s.node)) continue;
      items.push(item);
      if (item.scope !== null) s.scoped.set(item.key, item.version);
    }
    s.sentSeq = this.#registry.seq;
    s.sentVersion = this.#version;
    s.pending.set(this.#version, committedAt);
    // A snapshot replaces whatever was queued before it; a part 0 of a snapshot
    // makes the node drop a message it had only in part.
    s.queue = [];
    s.queued = 0;
    this.#enqueue(s, { type: 'snapshot', version: this.#version, from: 0, items, removals: [], at: 0, removedAt: 0, part: 0 });
  }

  #enqueue(s: NodeState, o: Outgoing): void {
    s.queue.push(o);
    s.queued += o.items.length + o.removals.length;
    // Falling behind by more than a whole snapshot: a snapshot of now is shorter than the queue.
    if (o.type === 'delta' && s.queued > this.#registry.items.size + 1024) {
      this.#events.resynced?.(s.node, s.queued);
      this.#queueSnapshot(s);
      return;
    }
    this.#pump(s);
  }

  /** Writes parts while fewer than MAX_IN_FLIGHT are unflushed. */
  #pump(s: NodeState): void {
    const channel = s.channel;
    while (channel && s.channel === channel && s.inFlight < MAX_IN_FLIGHT && s.queue.length) {
      const o = s.queue[0]!;
      const msg = this.#nextPart(s, o, channel);
      if (!msg) return; // refused: the stream is closed
      if (o.at === o.items.length && o.removedAt === o.removals.length) s.queue.shift();
      s.inFlight++;
      channel.send({ type: o.type, encoded: msg }, () => {
        if (s.channel !== channel) return;
        s.inFlight--;
        this.#pump(s);
      });
    }
  }

  /** The next part of `o`, or undefined when an item cannot fit the node's limit (the stream is then ended). */
  #nextPart(s: NodeState, o: Outgoing, channel: NodeChannel): Buffer | undefined {
    const limit = channel.maxMessageBytes || DEFAULT_NODE_MESSAGE_BYTES;
    const budget = Math.max(1024, Math.min(this.#partBytes, Math.floor(limit / 4)));
    const items: Buffer[] = [];
    const removals: string[] = [];
    let bytes = MESSAGE_OVERHEAD;
    while (o.at < o.items.length) {
      const item = o.items[o.at]!;
      if (item.bytes + MESSAGE_OVERHEAD > limit) {
        const reason = `${item.key} is ${formatBytes(item.bytes)} on the wire, more than node ${s.node} takes in one message (${formatBytes(limit)}, its max_message_bytes): make the object smaller, or raise the node's limit`;
        this.#refuse(s, reason);
        return undefined;
      }
      if (items.length && bytes + item.bytes > budget) break;
      items.push(item.encoded);
      bytes += item.bytes;
      o.at++;
    }
    while (o.removedAt < o.removals.length) {
      const key = o.removals[o.removedAt]!;
      const b = Buffer.byteLength(key) + 6;
      if ((items.length || removals.length) && bytes + b > budget) break;
      removals.push(key);
      bytes += b;
      o.removedAt++;
    }
    const more = o.at < o.items.length || o.removedAt < o.removals.length;
    const part = o.part++;
    s.queued -= items.length + removals.length;
    return encodePart({ type: o.type, version: o.version, from: o.from, part, more, totalItems: o.type === 'snapshot' ? o.items.length : 0, removals }, items);
  }

  #refuse(s: NodeState, reason: string): void {
    const channel = s.channel;
    s.channel = null;
    s.queue = [];
    s.queued = 0;
    s.inFlight = 0;
    s.pending.clear();
    // Whatever it holds, the next stream starts from a snapshot.
    s.resync = true;
    this.#events.refused?.(s.node, reason);
    channel?.close(reason, 'exhausted', 'too-large');
    this.#events.connected?.(this.connectedCount);
  }

  /**
   * Which connected node other than `node` has published one of `addresses`
   * (IPv4-mapped and IPv4 compared as one), if any. A node's published
   * address is where others open tunnels to it and whose tunnels a
   * destination believes a pod's address from (see docs/architecture.md,
   * 'One connection, end to end'), so one node may not take another live
   * node's. Linear in the nodes; called once per hello.
   */
  addressHeldBy(node: string, addresses: readonly string[]): { address: string; node: string } | undefined {
    const wanted = new Set(addresses.map(addressKey));
    for (const s of this.#nodes.values()) {
      if (s.node === node || s.channel === null) continue;
      const a = s.addresses.find((x) => wanted.has(addressKey(x)));
      if (a !== undefined) return { address: a, node: s.node };
    }
    return undefined;
  }

  /**
   * A node said hello on `channel`. `holds` is the version it has (0: none).
   * Replaces an older stream of the same node.
   */
  connect(node: string, holds: number, proxyVersion: string, channel: NodeChannel, addresses: string[] = [], failMode = ''): void {
    // Where the node takes tunnels is part of other nodes' config: push that first.
    const moved = this.#registry.setNodeAddresses(node, addresses);
    // An address moved here from a node that is not connected (a machine replaced, its address reused): that node no longer has it.
    const taken = new Set(addresses.map(addressKey));
    for (const other of this.#nodes.values()) {
      if (other.node === node || !other.addresses.some((a) => taken.has(addressKey(a)))) continue;
      other.addresses = other.addresses.filter((a) => !taken.has(addressKey(a)));
      for (const k of this.#registry.setNodeAddresses(other.node, other.addresses)) moved.add(k);
    }
    if (moved.size) this.changed(moved, this.#version);
    let s = this.#nodes.get(node);
    if (s?.channel) s.channel.close('replaced by a newer stream from the same node', undefined, 'replaced');
    const removed = s ? this.#registry.removedSince(s.sentSeq) : undefined;
    const resumable = s !== undefined && !s.resync && holds !== 0 && holds === s.sentVersion && holds === s.ackedVersion && removed !== undefined;
    if (!s) {
      s = {
        node,
        scoped: new Map(),
        sentSeq: 0,
        sentVersion: 0,
        ackedVersion: 0,
        nackedVersion: 0,
        nackReason: '',
        lastSeen: Date.now(),
        proxyVersion,
        addresses,
        failMode,
        channel,
        pending: new Map(),
        resync: false,
        queue: [],
        queued: 0,
        inFlight: 0,
      };
      this.#nodes.set(node, s);
    }
    s.channel = channel;
    s.proxyVersion = proxyVersion;
    s.addresses = addresses;
    s.failMode = failMode;
    s.lastSeen = Date.now();
    s.pending.clear();
    s.queue = [];
    s.queued = 0;
    s.inFlight = 0;
    this.#events.connected?.(this.connectedCount);
    const now = Date.now();
    if (resumable) {
      // Only what changed while it was away.
      const upserts: ItemState[] = [];
      const removals: string[] = [];
      const items = this.#registry.items;
      for (const item of items.values()) {
        if (item.scope === null) {
          if (item.version > s.sentSeq) upserts.push(item);
        } else this.#diffScoped(s, item.key, upserts, removals);
      }
      for (const key of s.scoped.keys()) if (!items.has(key)) this.#diffScoped(s, key, upserts, removals);
      for (const key of removed!) if (!isScopedKey(key) && !items.has(key)) removals.push(key);
      s.sentSeq = this.#registry.seq;
      if (upserts.length || removals.length) this.#queueDelta(s, upserts, removals, now);
      else channel.send({ type: 'delta', encoded: encodePart({ type: 'delta', version: s.sentVersion, from: s.sentVersion, part: 0, more: false, totalItems: 0, removals: [] }, []) });
      return;
    }
    this.#queueSnapshot(s, now);
  }

  ack(node: string, version: number): void {
    const s = this.#nodes.get(node);
    if (!s) return;
    s.lastSeen = Date.now();
    if (version > s.ackedVersion) s.ackedVersion = version;
    const committed = this.#commitTimes.get(version) ?? s.pending.get(version);
    for (const v of [...s.pending.keys()]) if (v <= version) s.pending.delete(v);
    if (committed !== undefined) this.#events.acked?.(node, version, (Date.now() - committed) / 1000);
  }

  nack(node: string, version: number, reason: string): void {
    const s = this.#nodes.get(node);
    if (!s) return;
    s.lastSeen = Date.now();
    s.nackedVersion = version;
    s.nackReason = reason;
    s.pending.delete(version);
    s.resync = true;
    // What is queued builds on the refused version: of no use to the node.
    s.queue = [];
    s.queued = 0;
    this.#events.nacked?.(node, version, reason);
  }

  heartbeat(node: string): void {
    const s = this.#nodes.get(node);
    if (s) s.lastSeen = Date.now();
  }

  /** The stream of `node` on `channel` ended; its state is kept for a resume. */
  disconnect(node: string, channel: NodeChannel): void {
    const s = this.#nodes.get(node);
    if (!s || s.channel !== channel) return;
    s.channel = null;
    s.pending.clear();
    s.queue = [];
    s.queued = 0;
    s.inFlight = 0;
    this.#events.connected?.(this.connectedCount);
  }

  /** Sends a heartbeat to every connected node. */
  heartbeatAll(): void {
    const msg: ConfigMessage = { heartbeat: { unixMs: Date.now() } };
    for (const s of this.#nodes.values()) s.channel?.send({ message: msg });
  }

  closeAll(reason: string): void {
    for (const s of this.#nodes.values()) {
      s.channel?.close(reason, undefined, 'controller-stopping');
      s.channel = null;
    }
  }

  nodes(): Pick<NodeStatusMessage, 'node' | 'connected' | 'sentVersion' | 'ackedVersion' | 'nackedVersion' | 'nackReason' | 'lastSeenUnixMs' | 'peer' | 'proxyVersion' | 'addresses' | 'streamCertificateSerial' | 'failMode'>[] {
    return [...this.#nodes.values()]
      .sort((a, b) => (a.node < b.node ? -1 : 1))
      .map((s) => ({
        node: s.node,
        connected: s.channel !== null,
        sentVersion: s.sentVersion,
        ackedVersion: s.ackedVersion,
        nackedVersion: s.nackedVersion,
        nackReason: s.nackReason,
        lastSeenUnixMs: s.lastSeen,
        peer: s.channel?.peer ?? '',
        proxyVersion: s.proxyVersion,
        addresses: s.addresses,
        failMode: s.failMode,
        streamCertificateSerial: s.channel?.serial ?? '',
      }));
  }

  /** The store version pushed from now. */
  get version(): number {
    return this.#version;
  }

  /** A stream authenticated as `node`, before its hello is checked. */
  streamOpened(node: string): void {
    this.#streams.opened(node);
  }

  /** A stream of `node` ended with gRPC status `code` (its name) for `reason`; `details` as sent or seen. */
  streamEnded(node: string, code: string, reason: StreamEndReason, details: string): void {
    this.#streams.ended(node, code, reason, details);
  }

  /** The node's hello said why its previous stream ended. */
  streamReported(node: string, lastError: string): void {
    this.#streams.reported(node, lastError);
  }

  streamRecord(node: string): Readonly<NodeStreamRecord> | undefined {
    return this.#streams.get(node);
  }

  /** Every node with a stream record, connected or not. */
  streamNodes(): string[] {
    return this.#streams.nodes();
  }
}

/** One spelling per address: IPv4-mapped IPv6 as IPv4, IPv6 in full. */
function addressKey(a: string): string {
  const ip = parseIp(a);
  return ip ? `${ip.v6 ? 6 : 4}:${ip.n}` : a;
}
