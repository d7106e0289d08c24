/** The hand-framed config wire: a snapshot written in pieces is byte for byte the one-part snapshot, and reads back as it. */
import { t } from 'tap';

import { decodeConfigMessage, encodeItem, encodePart, frameSnapshotItems, snapshotHead } from '../../src/api/config-wire';
import type { Item } from '../../src/api/proto';

const items: Item[] = Array.from({ length: 1_234 }, (_, i) => ({
  key: `Workload/shop/w-${i}`,
  workload: { node: `n${i % 7}`, serviceAccount: 'sa', addresses: [`198.18.${i >> 8}.${i & 255}`], labels: { app: `a${i % 13}`, long: 'x'.repeat(i % 300) }, ready: i % 5 !== 0, netns: '', resourceVersion: String(i) },
}));

t.test('snapshotHead + frameSnapshotItems in runs == encodePart of the whole snapshot', async (t) => {
  const encoded = items.map(encodeItem);
  const whole = encodePart({ type: 'snapshot', version: 42, from: 0, part: 0, more: false, totalItems: encoded.length, removals: [] }, encoded);
  for (const run of [1, 7, 500, 5_000]) {
    const chunks: Buffer[] = [];
    for (let i = 0; i < encoded.length; i += run) chunks.push(frameSnapshotItems(encoded.slice(i, i + run)));
    const itemsBytes = chunks.reduce((n, c) => n + c.length, 0);
    const pieces = Buffer.concat([snapshotHead({ version: 42, totalItems: encoded.length }, itemsBytes), ...chunks]);
    t.ok(pieces.equals(whole), `runs of ${run}: the same ${whole.length} bytes`);
  }
  const back = decodeConfigMessage(whole).snapshot!;
  t.equal(back.version, 42);
  t.equal(back.items.length, items.length);
  t.match(back.items[1_233], items[1_233], 'the last item reads back as it went in');
  t.ok(frameSnapshotItems([]).length === 0 && snapshotHead({ version: 1, totalItems: 0 }, 0).length > 0, 'an empty run frames to nothing');
});
