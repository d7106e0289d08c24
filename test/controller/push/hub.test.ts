/**
 * The push side's bounds, through a channel this test controls (pure: no
 * sockets): parts never exceed their budget, at most two parts per node wait
 * to be flushed, and a node that stops reading gets one fresh snapshot when it
 * reads again instead of an ever longer queue.
 */
import { t } from 'tap';

import { services, type ConfigMessage } from '../../../src/api/proto';
import { ConfigHub, type NodeChannel, type OutgoingMessage } from '../../../src/controller/push';
import { Registry } from '../../../src/controller/registry';
import type { Change } from '../../../src/controller/store';
import { ConfigState } from '../../../src/node-proxy/state';

const A = 'nodemesh.io/v1alpha1';
const wl = (i: number, ready = true): Change['resource'] => ({
  apiVersion: A,
  kind: 'Workload',
  metadata: { name: `w${i}`, namespace: 'shop', labels: { app: `s${i % 10}` } },
  spec: { node: `n${i % 3}`, serviceAccount: 'sa', addresses: [`198.18.${i >> 8}.${i & 255}`], ready },
});

/** What the node's gRPC client decodes from the bytes the controller writes. */
const decode = (services().NodeConfig.service.Stream as unknown as { responseDeserialize(b: Buffer): ConfigMessage }).responseDeserialize;
const decoded = (m: OutgoingMessage): ConfigMessage => (m.encoded ? decode(m.encoded) : m.message!);

/** A node's end of the stream: holds flush callbacks until released, applies what arrives. */
function channel(maxMessageBytes: number): NodeChannel & { sent: ConfigMessage[]; sizes: number[]; unflushed: (() => void)[]; maxUnflushed: number; state: ConfigState; closed?: string; flushAll(): void } {
  const state = new ConfigState();
  const c = {
    peer: 'test',
    maxMessageBytes,
    sent: [] as ConfigMessage[],
    sizes: [] as number[],
    unflushed: [] as (() => void)[],
    maxUnflushed: 0,
    state,
    closed: undefined as string | undefined,
    send(out: OutgoingMessage, flushed?: () => void) {
      const msg = decoded(out);
      c.sent.push(msg);
      c.sizes.push(out.encoded?.length ?? 0);
      state.apply(msg);
      if (flushed) c.unflushed.push(flushed);
      c.maxUnflushed = Math.max(c.maxUnflushed, c.unflushed.length);
    },
    close(reason: string) {
      c.closed = reason;
    },
    flushAll() {
      while (c.unflushed.length) c.unflushed.shift()!();
    },
  };
  return c;
}

function setup(n: number): { reg: Registry; hub: ConfigHub; version: number; resyncs: string[]; write(changes: Change[]): void } {
  const reg = new Registry('PEM');
  reg.load(Array.from({ length: n }, (_, i) => wl(i)), 1);
  const resyncs: string[] = [];
  const hub = new ConfigHub(reg, { resynced: (node) => resyncs.push(node) }, 1, { partBytes: 8 * 1024 });
  const out = {
    reg,
    hub,
    version: 1,
    resyncs,
    write(changes: Change[]) {
      out.version++;
      hub.changed(reg.apply(changes.map((c) => ({ ...c, version: out.version }))), out.version);
    },
  };
  return out;
}

t.test('a snapshot goes in parts within the budget, two unflushed at most, and is taken whole', async (t) => {
  const s = setup(2000);
  const c = channel(1024 * 1024);
  s.hub.connect('n0', 0, 'test', c);
  t.equal(c.sent.length, 2, 'two parts written before any is flushed');
  while (c.unflushed.length) c.unflushed.shift()!();
  t.ok(c.sent.length > 10, `${c.sent.length} parts`);
  t.equal(c.maxUnflushed, 2);
  t.ok(Math.max(...c.sizes) <= 8 * 1024, `no part over its 8 KiB budget (largest ${Math.max(...c.sizes)} bytes)`);
  t.ok(Math.min(...c.sizes.slice(0, -1)) > 6 * 1024, 'and parts are not needlessly small');
  t.same(c.sent.map((m) => m.snapshot!.part), c.sent.map((_, i) => i), 'numbered in order');
  t.same(c.sent.map((m) => m.snapshot!.more), [...c.sent.slice(1).map(() => true), false], 'the last one says so');
  t.equal([...c.state.items.keys()].filter((k) => k.startsWith('Workload/')).length, 2000, 'the node took all of it');
});

t.test('a node that stops reading gets a fresh snapshot, not an ever longer queue', async (t) => {
  const s = setup(300);
  const c = channel(1024 * 1024);
  s.hub.connect('n0', 0, 'test', c);
  c.flushAll();
  // The node stops flushing: its stream is full. Writes keep coming, 300 workloads each.
  c.send = function (out, flushed) {
    this.sent.push(decoded(out));
    if (flushed) this.unflushed.push(flushed);
  };
  const sentBefore = c.sent.length;
  for (let round = 0; round < 10; round++) s.write(Array.from({ length: 300 }, (_, i) => ({ type: 'MODIFIED', version: 0, resource: wl(i, round % 2 === 0 ? false : true) })));
  t.ok(c.sent.length - sentBefore <= 2, 'nothing more is written while two parts wait');
  t.ok(s.resyncs.length >= 1, `the queue was replaced by a snapshot (${s.resyncs.length} times) instead of growing past one snapshot`);
  // It reads again: what arrives leads to the state of the last write.
  const pending = c.sent.slice(sentBefore);
  for (let i = 0; i < 100 && c.unflushed.length; i++) c.flushAll();
  const after = c.sent.slice(sentBefore + pending.length);
  t.ok(after.length > 0 && after[0]!.snapshot?.part === 0, 'what comes next starts a snapshot');
  const node = new ConfigState();
  for (const m of after) node.apply(m);
  t.equal(node.version, s.version, 'of the latest version');
  t.equal((node.get('Workload/shop/w7') as { spec: { ready: boolean } }).spec.ready, true, 'with the latest content');
});

t.test('an item over the node limit ends its stream with a reason; other nodes are not affected', async (t) => {
  const s = setup(3);
  const small = channel(2048);
  const big = channel(1024 * 1024);
  s.hub.connect('n1', 0, 'test', small);
  s.hub.connect('n2', 0, 'test', big);
  small.flushAll();
  big.flushAll();
  const labels = Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`k${i}`, 'v'.repeat(60)]));
  s.write([{ type: 'MODIFIED', version: 0, resource: { ...wl(1), metadata: { ...wl(1).metadata, labels } } }]);
  t.match(small.closed, /^Workload\/shop\/w1 is [\d.]+ KiB on the wire, more than node n1 takes in one message \(2 KiB/);
  t.equal(big.closed, undefined);
  big.flushAll();
  t.equal(Object.keys((big.state.get('Workload/shop/w1') as { metadata: { labels: object } }).metadata.labels).length, 40, 'the other node got it');
  t.same(s.hub.nodes().find((n) => n.node === 'n1')!.connected, false);
});

t.test('a node back after a removal resumes with the removal, not a snapshot', async (t) => {
  const s = setup(5);
  const c = channel(1024 * 1024);
  s.hub.connect('n0', 0, 'test', c);
  c.flushAll();
  s.hub.ack('n0', c.state.version);
  s.hub.disconnect('n0', c);
  s.write([{ type: 'DELETED', version: 0, resource: wl(2) }]);
  s.write([{ type: 'MODIFIED', version: 0, resource: wl(3, false) }]);
  const again = channel(1024 * 1024);
  again.state.apply({ snapshot: { version: c.state.version, items: [...c.state.items].map(([key, v]) => ({ key, json: JSON.stringify(v) })) } });
  s.hub.connect('n0', c.state.version, 'test', again);
  again.flushAll();
  t.equal(again.sent.length, 1);
  t.same(again.sent[0]!.delta!.removals, ['Workload/shop/w2']);
  t.same(again.sent[0]!.delta!.upserts.map((i) => i.key), ['Workload/shop/w3']);
  t.notOk(again.state.items.has('Workload/shop/w2'));
});
