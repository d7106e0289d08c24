/** The pure parts of the controller's listener bounds: the descriptor budget, limit parsing (the shared tables: test/net). */
import { t } from 'tap';

import { connectionBudget, FD_RESERVE, LISTENER_DEFAULTS, parseListenerLimits } from '../../../src/controller/listen';

t.test('connectionBudget keeps the reserve and 15014 under RLIMIT_NOFILE', async (t) => {
  t.same(connectionBudget(LISTENER_DEFAULTS, undefined), { maxConnections: LISTENER_DEFAULTS.maxConnections, clamped: false });
  t.same(connectionBudget(LISTENER_DEFAULTS, 1_048_576), { maxConnections: LISTENER_DEFAULTS.maxConnections, clamped: false });
  t.same(connectionBudget(LISTENER_DEFAULTS, Number.MAX_SAFE_INTEGER), { maxConnections: LISTENER_DEFAULTS.maxConnections, clamped: false }, 'unlimited, as readOpenFileLimit says it');
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
