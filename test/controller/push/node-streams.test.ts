/** Each node's stream record: what counts as its last error, and when. */
import { t } from 'tap';

import { LIMITS } from '../../../src/api/limits';
import { NodeStreamRecords } from '../../../src/controller/push';

t.test('an end is the last error unless it was clean or the node cancelled (its next hello says why)', async (t) => {
  const r = new NodeStreamRecords();
  r.opened('n1');
  r.ended('n1', 'OK', 'replaced', 'replaced by a newer stream from the same node', 1000);
  r.ended('n1', 'CANCELLED', 'node-cancelled', 'the node cancelled the stream', 2000);
  t.match(r.get('n1'), { streamsOpened: 1, lastError: '', lastErrorUnixMs: 0, lastEnd: { code: 'CANCELLED', reason: 'node-cancelled', unixMs: 2000 } });
  r.ended('n1', 'PERMISSION_DENIED', 'bad-hello', 'hello names node n9, but the certificate is node n1', 3000);
  t.match(r.get('n1'), { lastError: 'PERMISSION_DENIED: hello names node n9, but the certificate is node n1', lastErrorUnixMs: 3000 });
  t.equal(r.get('n2'), undefined, 'no record for a node never seen');
});

t.test("the node's report of a cancel takes the time the controller saw the cancel", async (t) => {
  const r = new NodeStreamRecords();
  r.ended('n1', 'CANCELLED', 'node-cancelled', 'the node cancelled the stream', 5000);
  r.reported('n1', '8 RESOURCE_EXHAUSTED: Received message larger than max (1395 vs 1024)', 5300);
  t.match(r.get('n1'), { lastError: 'node: 8 RESOURCE_EXHAUSTED: Received message larger than max (1395 vs 1024)', lastErrorUnixMs: 5000 });
  r.reported('n1', '14 UNAVAILABLE: No connection established', 9000);
  t.match(r.get('n1'), { lastError: 'node: 14 UNAVAILABLE: No connection established', lastErrorUnixMs: 9000 }, 'a second report without a new end: an attempt that never reached the controller, at the hello');
  r.reported('n1', '', 9500);
  t.equal(r.get('n1')!.lastErrorUnixMs, 9000, 'an empty report changes nothing');
});

t.test('an end the controller recorded as an error keeps its own words over the node echoing it', async (t) => {
  const r = new NodeStreamRecords();
  r.ended('n1', 'PERMISSION_DENIED', 'revoked', 'node n1 was revoked', 1000);
  r.reported('n1', '7 PERMISSION_DENIED: node n1 was revoked', 2000);
  t.match(r.get('n1'), { lastError: 'PERMISSION_DENIED: node n1 was revoked', lastErrorUnixMs: 1000 });
});

t.test('text is clipped: a node cannot make its record large', async (t) => {
  const r = new NodeStreamRecords();
  r.reported('n1', 'x'.repeat(100_000), 1);
  t.ok(r.get('n1')!.lastError.length <= LIMITS.maxNodeTextChars + 1, `${r.get('n1')!.lastError.length} characters kept`);
  r.ended('n1', 'INTERNAL', 'internal', '\ud800'.repeat(5000), 2);
  t.ok(r.get('n1')!.lastError.length <= LIMITS.maxNodeTextChars + 1);
  t.notMatch(r.get('n1')!.lastError, /[\ud800-\udbff](?![\udc00-\udfff])/, 'and well-formed');
});
