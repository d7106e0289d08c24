/** Peer keys and the admission table every listener (node proxy and controller) counts peers with. */
import { t } from 'tap';

import { AdmissionTable, peerKey } from '../../src/net';

t.test('peerKey: one address, IPv4-mapped as IPv4, IPv6 in one spelling', async (t) => {
  const cases: [string | undefined, string][] = [
    ['198.18.0.1', '198.18.0.1'],
    ['::ffff:198.18.0.1', '198.18.0.1'],
    ['2001:2::1', '2001:2:0:0:0:0:0:1'],
    ['2001:0002:0000:0000:0000:0000:0000:0001', '2001:2:0:0:0:0:0:1'],
    ['2001:2::2', '2001:2:0:0:0:0:0:2'],
    ['2001:2:0:0:FFFF::9', '2001:2:0:0:ffff:0:0:9'],
    ['::1', '0:0:0:0:0:0:0:1'],
    [undefined, 'unknown'],
  ];
  for (const [addr, key] of cases) t.equal(peerKey(addr), key, String(addr));
});

t.test('AdmissionTable: per peer, then in total; a released slot is free again', async (t) => {
  const a = new AdmissionTable(3, 2);
  t.same([a.admit('x'), a.admit('x'), a.admit('x')].map((r) => (r.admitted ? 'ok' : r.reason)), ['ok', 'ok', 'per-peer']);
  t.same(a.admit('y'), { admitted: true });
  t.same(a.admit('z'), { admitted: false, reason: 'total' });
  t.equal(a.held('x'), 2);
  a.release('x');
  t.same(a.admit('z'), { admitted: true }, 'a released slot is free again');
  a.release('nobody');
  t.equal(a.size, 3, 'releasing what was never admitted changes nothing');
});

t.test('AdmissionTable: the total is checked before the peer, so a full listener says total', async (t) => {
  const a = new AdmissionTable(2, 1);
  t.same([a.admit('p'), a.admit('q')].map((r) => r.admitted), [true, true]);
  t.same(a.admit('p'), { admitted: false, reason: 'total' });
  t.same(a.admit('r'), { admitted: false, reason: 'total' });
  a.release('q');
  t.same(a.admit('p'), { admitted: false, reason: 'per-peer' });
  t.same(a.admit('r'), { admitted: true });
});
