/** A node's config state: parts gathered and taken whole, or refused whole (pure). */
import { t } from 'tap';

import type { Item } from '../../../src/api/proto';
import { ConfigRejected, ConfigState } from '../../../src/node-proxy/state';

const w = (i: number): Item => ({ key: `Workload/shop/w${i}`, workload: { node: 'n1', serviceAccount: 'sa', addresses: [`198.18.0.${i}`], labels: {}, ready: true, netns: '', resourceVersion: '' } });
const items = (from: number, n: number): Item[] => Array.from({ length: n }, (_, k) => w(from + k));

t.test('parts are gathered, then taken as one version', async (t) => {
  const s = new ConfigState();
  t.equal(s.apply({ snapshot: { version: 5, items: items(0, 2), more: true, part: 0, totalItems: 5 } }), undefined, 'nothing taken after part 0');
  t.equal(s.version, 0);
  t.match(s.receiving, { type: 'snapshot', version: 5, parts: 1, items: 2, totalItems: 5 });
  s.apply({ snapshot: { version: 5, items: items(2, 2), more: true, part: 1, totalItems: 5 } });
  const r = s.apply({ snapshot: { version: 5, items: items(4, 1), more: false, part: 2, totalItems: 5 } });
  t.equal(r!.version, 5);
  t.equal(s.items.size, 5);
  t.equal(s.receiving, undefined);
  // A delta in parts patches in place.
  s.apply({ delta: { version: 6, fromVersion: 5, upserts: [w(9)], removals: [], more: true, part: 0 } });
  t.notOk(s.items.has('Workload/shop/w9'), 'not before its last part');
  const d = s.apply({ delta: { version: 6, fromVersion: 5, upserts: [], removals: ['Workload/shop/w0'], more: false, part: 1 } });
  t.same(d!.changed.sort(), ['Workload/shop/w0', 'Workload/shop/w9']);
  t.ok(s.items.has('Workload/shop/w9'));
  t.notOk(s.items.has('Workload/shop/w0'));
});

t.test('out of order, interrupted or too large: refused whole, the state stays', async (t) => {
  const s = new ConfigState({ maxItems: 10 });
  s.apply({ snapshot: { version: 1, items: items(0, 3) } });
  const held = [...s.items.keys()];
  s.apply({ snapshot: { version: 2, items: items(10, 2), more: true, part: 0, totalItems: 4 } });
  t.throws(() => s.apply({ snapshot: { version: 2, items: items(12, 2), more: false, part: 2, totalItems: 4 } }), /part 2 of snapshot 2 arrived, but part 1 of snapshot 2 was next/);
  t.equal(s.receiving, undefined, 'the parts gathered are dropped');
  s.apply({ snapshot: { version: 3, items: items(10, 2), more: true, part: 0, totalItems: 4 } });
  t.throws(() => s.apply({ delta: { version: 4, fromVersion: 1, upserts: [], removals: [], part: 0 } }), /a delta to version 4 arrived while snapshot 3 was still in parts/);
  // A part 0 of a snapshot starts over.
  s.apply({ snapshot: { version: 3, items: items(10, 2), more: true, part: 0, totalItems: 4 } });
  s.apply({ snapshot: { version: 4, items: items(20, 1), more: true, part: 0, totalItems: 2 } });
  t.match(s.receiving, { version: 4, parts: 1 });
  s.abandon();
  let refused: unknown;
  try {
    s.apply({ snapshot: { version: 5, items: [], more: true, part: 0, totalItems: 11 } });
  } catch (err) {
    refused = err;
  }
  t.ok(refused instanceof ConfigRejected, 'a snapshot larger than the node holds is refused at its first part');
  t.equal(s.apply({ snapshot: { version: 5, items: items(0, 2), more: true, part: 1, totalItems: 11 } }), undefined, 'its other parts are dropped without another refusal');
  t.equal(s.apply({ snapshot: { version: 5, items: items(2, 2), more: false, part: 2, totalItems: 11 } }), undefined);
  t.match((refused as Error).message, /the snapshot has 11 items, more than this node holds \(10, --max-config-items\)/);
  t.throws(() => s.apply({ delta: { version: 5, fromVersion: 1, upserts: items(30, 8), removals: [] } }), /would have this node hold more than 10 items/);
  t.throws(() => s.apply({ delta: { version: 5, fromVersion: 1, upserts: [{ key: 'Workload/shop/x', service: { json: '{}', endpoints: [] } }], removals: [] } }), /item Workload\/shop\/x carries a service/);
  t.throws(() => s.apply({ delta: { version: 5, fromVersion: 1, upserts: [{ key: 'no-slashes', json: '{}' }], removals: [] } }), /is not Kind\/namespace\/name/);
  t.equal(s.version, 1);
  t.same([...s.items.keys()], held, 'what it held stays');
});
