/**
 * Config push: one session per node. On hello a node gets a snapshot of its
 * slice, or, when the controller still remembers what it sent that node at
 * the version the node names, only the difference. After each store write the
 * registry says which items changed; every connected node whose slice they
 * touch gets one delta. Nodes ACK or NACK each version.
 *
 * Transport-free: a session talks through a NodeChannel (the gRPC stream in
 * api/, a fake in tests of this file's logic).
 */
import type { ConfigMessage, Item, NodeStatusMessage } from '../../api/proto';
import { wants, type Registry } from '../registry';

export interface NodeChannel {
  readonly peer: string;
  /** Serial of the certificate the stream authenticated with. */
  readonly serial?: string;
  send(msg: ConfigMessage): void;
  /** `denied`: end it as PERMISSION_DENIED (the node lost its right to a config), not as a clean end. */
  close(reason: string, denied?: boolean): void;
}

export interface PushEvents {
  /** A node acknowledged `version`, `seconds` after the write that made it. */
  acked?(node: string, version: number, seconds: number): void;
  nacked?(node: string, version: number, reason: string): void;
  connected?(count: number): void;
}

interface NodeState {
  node: string;
  /** What this node was last sent: item key -> item version. */
  sent: Map<string, number>;
  sentVersion: number;
  ackedVersion: number;
  nackedVersion: number;
  nackReason: string;
  lastSeen: number;
  proxyVersion: string;
  addresses: string[];
  channel: NodeChannel | null;
  /** version -> when its write was committed (ms), until ACKed. */
  pending: Map<number, number>;
  /**
   * The node refused a version and holds an older one, which deltas cannot
   * start from: its next config is a whole snapshot.
   */
  resync: boolean;
}

export class ConfigHub {
  readonly #registry: Registry;
  readonly #events: PushEvents;
  readonly #nodes = new Map<string, NodeState>();
  /** Commit time of each recent store version, for push latency. */
  readonly #commitTimes = new Map<number, number>();
  #version = 0;

  constructor(registry: Registry, events: PushEvents = {}, version = 0) {
    this.#registry = registry;
    this.#events = events;
    this.#version = version;
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
    s.channel?.close(reason, true);
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
    for (const s of this.#nodes.values()) {
      if (!s.channel) continue;
      if (s.resync) {
        this.#sendSnapshot(s, committedAt);
        continue;
      }
      const upserts: Item[] = [];
      const removals: string[] = [];
      for (const key of dirty) this.#diffKey(s, key, upserts, removals);
      if (upserts.length || removals.length) this.#sendDelta(s, upserts, removals, committedAt);
    }
  }

  #diffKey(s: NodeState, key: string, upserts: Item[], removals: string[]): void {
    const item = this.#registry.items.get(key);
    if (item && wants(item, s.node)) {
      if (s.sent.get(key) !== item.version) {
        upserts.push({ key, json: item.json });
        s.sent.set(key, item.version);
      }
    } else if (s.sent.delete(key)) {
      removals.push(key);
    }
  }

  #sendDelta(s: NodeState, upserts: Item[], removals: string[], committedAt: number): void {
    const from = s.sentVersion;
    s.sentVersion = this.#version;
    s.pending.set(this.#version, committedAt);
    s.channel!.send({ delta: { version: this.#version, fromVersion: from, upserts, removals } });
  }

  /**
   * A node said hello on `channel`. `holds` is the version it has (0: none).
   * Replaces an older stream of the same node.
   */
  connect(node: string, holds: number, proxyVersion: string, channel: NodeChannel, addresses: string[] = []): void {
    // Where the node takes tunnels is part of other nodes' config: push that first.
    const moved = this.#registry.setNodeAddresses(node, addresses);
    if (moved.size) this.changed(moved, this.#version);
    let s = this.#nodes.get(node);
    if (s?.channel) s.channel.close('replaced by a newer stream from the same node');
    const resumable = s !== undefined && !s.resync && holds !== 0 && holds === s.sentVersion && holds === s.ackedVersion;
    if (!s) {
      s = { node, sent: new Map(), sentVersion: 0, ackedVersion: 0, nackedVersion: 0, nackReason: '', lastSeen: Date.now(), proxyVersion, addresses, channel, pending: new Map(), resync: false };
      this.#nodes.set(node, s);
    }
    s.channel = channel;
    s.proxyVersion = proxyVersion;
    s.addresses = addresses;
    s.lastSeen = Date.now();
    s.pending.clear();
    this.#events.connected?.(this.connectedCount);
    const now = Date.now();
    if (resumable) {
      // Only what changed while it was away.
      const upserts: Item[] = [];
      const removals: string[] = [];
      for (const key of this.#registry.items.keys()) this.#diffKey(s, key, upserts, removals);
      for (const key of [...s.sent.keys()]) if (!this.#registry.items.has(key)) this.#diffKey(s, key, upserts, removals);
      if (upserts.length || removals.length) this.#sendDelta(s, upserts, removals, now);
      else channel.send({ delta: { version: s.sentVersion, fromVersion: s.sentVersion, upserts: [], removals: [] } });
      return;
    }
    this.#sendSnapshot(s, now);
  }

  /** Everything the node should hold, replacing what it has. */
  #sendSnapshot(s: NodeState, committedAt: number): void {
    s.sent.clear();
    s.resync = false;
    const items: Item[] = [];
    for (const item of this.#registry.items.values()) {
      if (!wants(item, s.node)) continue;
      items.push({ key: item.key, json: item.json });
      s.sent.set(item.key, item.version);
    }
    s.sentVersion = this.#version;
    s.pending.set(this.#version, committedAt);
    s.channel!.send({ snapshot: { version: this.#version, items } });
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
    this.#events.connected?.(this.connectedCount);
  }

  /** Sends a heartbeat to every connected node. */
  heartbeatAll(): void {
    const msg: ConfigMessage = { heartbeat: { unixMs: Date.now() } };
    for (const s of this.#nodes.values()) s.channel?.send(msg);
  }

  closeAll(reason: string): void {
    for (const s of this.#nodes.values()) {
      s.channel?.close(reason);
      s.channel = null;
    }
  }

  nodes(): Pick<NodeStatusMessage, 'node' | 'connected' | 'sentVersion' | 'ackedVersion' | 'nackedVersion' | 'nackReason' | 'lastSeenUnixMs' | 'peer' | 'proxyVersion' | 'addresses' | 'streamCertificateSerial'>[] {
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
        streamCertificateSerial: s.channel?.serial ?? '',
      }));
  }
}
