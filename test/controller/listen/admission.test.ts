/** The pure parts of the listener bounds: peer keys, the admission table, rate budgets, the descriptor budget, limit parsing. */
import { t } from 'tap';

import { AdmissionTable, connectionBudget, FD_RESERVE, LISTENER_DEFAULTS, parseListenerLimits, peerKey, RateBudget } from '../../../src/controller/listen';

t.test('peerKey: an IPv4 address, IPv4-mapped as IPv4, IPv6 by /64', async (t) => {
  const cases: [string | undefined, string][] = [
    ['198.18.0.1', '198.18.0.1'],
    ['::ffff:198.18.0.1', '198.18.0.1'],
    ['2001:2::1', '2001:2:0:0::/64'],
    ['2001:2:0:0:ffff::9', '2001:2:0:0::/64'],
    ['2001:0002:0000:0001:0:0:0:1', '2001:2:0:1::/64'],
    ['::1', '0:0:0:0::/64'],
    [undefined, 'unknown'],
  ];
  for (const [addr, key] of cases) t.equal(peerKey(addr), key, String(addr));
});

t.test('AdmissionTable: total, per peer, handshakes in total and per peer', async (t) => {
  const a = new AdmissionTable({ maxConnections: 5, maxConnectionsPerPeer: 2, maxHandshakes: 2, maxHandshakesPerPeer: 1 });
  t.equal(a.admit('p'), undefined);
  t.equal(a.admit('p'), 'handshake_limit', 'one handshake per peer at a time');
  a.handshakeDone('p');
  t.equal(a.admit('p'), undefined);
  a.handshakeDone('p');
  t.equal(a.admit('p'), 'peer_limit', 'two connections per peer');
  t.equal(a.admit('q'), undefined);
  t.equal(a.admit('r'), undefined);
  t.equal(a.admit('s'), 'handshake_limit', 'two handshakes in flight in total');
  a.handshakeDone('q');
  t.equal(a.admit('s'), undefined);
  t.equal(a.admit('u'), 'total_limit', 'five connections in total');
  a.release('p');
  t.equal(a.open, 4);
  t.equal(a.handshaking, 2);
  t.equal(a.admit('p'), 'handshake_limit', 'a released slot is free again, the handshakes still full');
});

t.test('RateBudget: a burst, then the sustained rate', async (t) => {
  const b = new RateBudget(10, 5, 0);
  t.same([1, 2, 3, 4, 5, 6].map(() => b.take(0)), [true, true, true, true, true, false]);
  t.equal(b.take(100), true, '100 ms at 10/s earns one');
  t.equal(b.take(100), false);
});

t.test('connectionBudget keeps the reserve and 15014 under RLIMIT_NOFILE', async (t) => {
  t.same(connectionBudget(LISTENER_DEFAULTS, undefined), { maxConnections: LISTENER_DEFAULTS.maxConnections, clamped: false });
  t.same(connectionBudget(LISTENER_DEFAULTS, 1_048_576), { maxConnections: LISTENER_DEFAULTS.maxConnections, clamped: false });
  t.same(connectionBudget(LISTENER_DEFAULTS, 1024), { maxConnections: 1024 - FD_RESERVE - LISTENER_DEFAULTS.metricsMaxConnections, clamped: true });
  t.equal(connectionBudget(LISTENER_DEFAULTS, 10).maxConnections, 1);
});

t.test('parseListenerLimits rejects unknown keys and bad values, naming them', async (t) => {
  t.equal(parseListenerLimits({ maxConnectionsPerPeer: 5 }).maxConnectionsPerPeer, 5);
  t.ok(Object.isFrozen(parseListenerLimits()));
  t.throws(() => parseListenerLimits({ maxConnectionz: 5 }), { code: 'NM_ERR_USAGE', message: /unknown listener limit "maxConnectionz"/ });
  t.throws(() => parseListenerLimits({ maxConnections: 0 }), { message: /maxConnections must be a positive integer, got 0/ });
  t.throws(() => parseListenerLimits({ metricsHeadersTimeoutMs: 20_000, metricsRequestTimeoutMs: 10_000 }), { message: /must not exceed metricsRequestTimeoutMs/ });
});
