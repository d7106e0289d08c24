/**
 * The config stream's messages, serialized by the controller itself: every
 * item is encoded once when it changes and the same bytes go to every node,
 * so a snapshot of 50,000 workloads to 100 nodes is 100 concatenations, not
 * 5,000,000 encodings. A part is its header (version, flags, removals),
 * encoded with protobufjs from the .proto, followed by its items, each as the
 * length-delimited field it is in Snapshot.items / Delta.upserts: protobuf
 * reads a repeated field the same wherever its elements sit in the message.
 */
import * as path from 'node:path';

import * as protobuf from 'protobufjs';

import { PROTO_DIR, type ConfigMessage, type Item } from './proto';

interface Types {
  Item: protobuf.Type;
  Snapshot: protobuf.Type;
  Delta: protobuf.Type;
  ConfigMessage: protobuf.Type;
}

let types: Types | undefined;

function load(): Types {
  if (types) return types;
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => path.join(PROTO_DIR, target);
  root.loadSync('nodemesh/v1/node_config.proto', { keepCase: false });
  types = {
    Item: root.lookupType('nodemesh.v1.Item'),
    Snapshot: root.lookupType('nodemesh.v1.Snapshot'),
    Delta: root.lookupType('nodemesh.v1.Delta'),
    ConfigMessage: root.lookupType('nodemesh.v1.ConfigMessage'),
  };
  return types;
}

/** Field tags (field number << 3 | 2: length-delimited). */
const TAG_CONFIG_SNAPSHOT = (1 << 3) | 2;
const TAG_CONFIG_DELTA = (2 << 3) | 2;
const TAG_SNAPSHOT_ITEMS = (2 << 3) | 2;
const TAG_DELTA_UPSERTS = (3 << 3) | 2;

/** One item as a repeated-field element: its bytes, ready to be concatenated into a part. */
export function encodeItem(item: Item): Buffer {
  const t = load();
  return Buffer.from(t.Item.encode(t.Item.fromObject(item)).finish());
}

function varintLength(n: number): number {
  let len = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 128);
    len++;
  }
  return len;
}

function writeVarint(buf: Buffer, at: number, n: number): number {
  while (n >= 0x80) {
    buf[at++] = (n & 0x7f) | 0x80;
    n = Math.floor(n / 128);
  }
  buf[at++] = n;
  return at;
}

/** Bytes an encoded item takes inside a part (tag and length prefix included). */
export function framedLength(encoded: Buffer): number {
  return 1 + varintLength(encoded.length) + encoded.length;
}

export interface PartHeader {
  type: 'snapshot' | 'delta';
  version: number;
  from: number;
  part: number;
  more: boolean;
  totalItems: number;
  removals: readonly string[];
}

/** A whole ConfigMessage holding one part: the header's fields and the items, as the node's gRPC decoder reads it. */
export function encodePart(h: PartHeader, items: readonly Buffer[]): Buffer {
  const t = load();
  const head =
    h.type === 'snapshot'
      ? t.Snapshot.encode(t.Snapshot.fromObject({ version: h.version, more: h.more, part: h.part, totalItems: h.totalItems })).finish()
      : t.Delta.encode(t.Delta.fromObject({ version: h.version, fromVersion: h.from, removals: h.removals, more: h.more, part: h.part })).finish();
  let inner = head.length;
  for (const it of items) inner += framedLength(it);
  const out = Buffer.allocUnsafe(1 + varintLength(inner) + inner);
  let at = 0;
  out[at++] = h.type === 'snapshot' ? TAG_CONFIG_SNAPSHOT : TAG_CONFIG_DELTA;
  at = writeVarint(out, at, inner);
  out.set(head, at);
  at += head.length;
  writeFramed(out, at, h.type === 'snapshot' ? TAG_SNAPSHOT_ITEMS : TAG_DELTA_UPSERTS, items);
  return out;
}

function writeFramed(out: Buffer, at: number, tag: number, items: readonly Buffer[]): number {
  for (const it of items) {
    out[at++] = tag;
    at = writeVarint(out, at, it.length);
    out.set(it, at);
    at += it.length;
  }
  return at;
}

/**
 * A run of encoded items framed as a snapshot's `items` field: runs written
 * one after another after snapshotHead() are, byte for byte, what
 * encodePart() makes of all their items at once. For a whole snapshot
 * written in pieces (the proxy's last-good file), so no list of every
 * item's buffer is held at once.
 */
export function frameSnapshotItems(items: readonly Buffer[]): Buffer {
  let n = 0;
  for (const it of items) n += framedLength(it);
  const out = Buffer.allocUnsafe(n);
  writeFramed(out, 0, TAG_SNAPSHOT_ITEMS, items);
  return out;
}

/** What comes before a one-part snapshot's framed items, `itemsBytes` long in all: the message's tag and length, the snapshot's fields. */
export function snapshotHead(h: { version: number; totalItems: number }, itemsBytes: number): Buffer {
  const t = load();
  const head = t.Snapshot.encode(t.Snapshot.fromObject({ version: h.version, more: false, part: 0, totalItems: h.totalItems })).finish();
  const inner = head.length + itemsBytes;
  const out = Buffer.allocUnsafe(1 + varintLength(inner) + head.length);
  let at = 0;
  out[at++] = TAG_CONFIG_SNAPSHOT;
  at = writeVarint(out, at, inner);
  out.set(head, at);
  return out;
}

/**
 * A ConfigMessage from its bytes, in the shape the node's gRPC decoder gives
 * (the options of api/proto.ts): a config kept on disk in the stream's own
 * form is read back into what the stream would have delivered.
 * Throws on bytes that are not one.
 */
export function decodeConfigMessage(bytes: Uint8Array): ConfigMessage {
  const t = load();
  return t.ConfigMessage.toObject(t.ConfigMessage.decode(bytes), { longs: Number, enums: String, defaults: true, oneofs: true }) as ConfigMessage;
}
