/** host:port spelled one way everywhere (pure). */
import { t } from 'tap';

import { formatHostPort } from '../../src/api/address';

t.test('formatHostPort brackets IPv6 hosts only', async (t) => {
  t.equal(formatHostPort('198.18.0.1', 15008), '198.18.0.1:15008');
  t.equal(formatHostPort('2001:2::1', 15008), '[2001:2::1]:15008');
  t.equal(formatHostPort('::ffff:198.18.0.1', 80), '[::ffff:198.18.0.1]:80');
  t.equal(formatHostPort('localhost', 15010), 'localhost:15010');
});
