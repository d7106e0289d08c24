/** The token bucket both sides bound HTTP/2 PING, SETTINGS and reset floods with. */
import { t } from 'tap';

import { RateBudget } from '../../src/net';

t.test('RateBudget: a burst, then the sustained rate', async (t) => {
  const b = new RateBudget(10, 5, 0);
  t.same([1, 2, 3, 4, 5, 6].map(() => b.take(0)), [true, true, true, true, true, false]);
  t.equal(b.take(100), true, '100 ms at 10/s earns one');
  t.equal(b.take(100), false);
});

t.test('RateBudget with a burst of one second: N in a second pass, N+1 do not, the next second passes again', async (t) => {
  const b = new RateBudget(2, 2, 0);
  t.same([b.take(0), b.take(10), b.take(20), b.take(1000), b.take(1001)], [true, true, false, true, true]);
});

t.test('RateBudget: a quiet spell earns no more than the burst', async (t) => {
  const b = new RateBudget(10, 3, 0);
  t.same([1, 2, 3, 4].map(() => b.take(60_000)), [true, true, true, false]);
});
