/**
 * The addresses the proxy refuses to dial on a pod's behalf: every form of
 * "this host" (unspecified, loopback, their IPv4-mapped and zone forms),
 * link-local, and the node's own addresses; everything else is allowed.
 */
import { t } from 'tap';

import { DialGuard } from '../../../src/node-proxy/outbound';
import { dialVerdict, OwnAddresses, type DialRefusal } from '../../../src/node-proxy/policy';

const own = new OwnAddresses(['198.18.0.1', '2001:2::1', '198.18.1.254', 'fe80::1%eth0', 'not-an-ip']);

const CASES: [string, DialRefusal | 'allowed'][] = [
  ['0.0.0.0', 'dial-unspecified'],
  ['0.1.2.3', 'dial-unspecified'],
  ['::', 'dial-unspecified'],
  ['0:0:0:0:0:0:0:0', 'dial-unspecified'],
  ['::ffff:0.0.0.0', 'dial-unspecified'],
  ['::ffff:0:0', 'dial-unspecified'],
  ['::FFFF:0.0.0.9', 'dial-unspecified'],
  ['127.0.0.1', 'dial-loopback'],
  ['127.255.255.254', 'dial-loopback'],
  ['::1', 'dial-loopback'],
  ['0::0001', 'dial-loopback'],
  ['::ffff:127.0.0.1', 'dial-loopback'],
  ['::ffff:7f00:1', 'dial-loopback'],
  ['169.254.169.254', 'dial-link-local'],
  ['::ffff:169.254.169.254', 'dial-link-local'],
  ['fe80::1', 'dial-link-local'],
  ['fe80::1%eth0', 'dial-link-local'],
  ['febf::1', 'dial-link-local'],
  ['198.18.0.1', 'dial-own-address'],
  ['::ffff:198.18.0.1', 'dial-own-address'],
  ['198.18.1.254', 'dial-own-address'],
  ['2001:2:0:0::1', 'dial-own-address'],
  ['2001:0002::0001', 'dial-own-address'],
  ['localhost', 'dial-not-an-address'],
  ['', 'dial-not-an-address'],
  ['127.0.0.1.', 'dial-not-an-address'],
  ['1.2.3', 'dial-not-an-address'],
  // allowed: pods, other hosts, and neighbours of every refused block
  ['198.18.0.2', 'allowed'],
  ['198.18.1.1', 'allowed'],
  ['1.0.0.0', 'allowed'],
  ['126.255.255.255', 'allowed'],
  ['128.0.0.0', 'allowed'],
  ['169.253.255.255', 'allowed'],
  ['169.255.0.0', 'allowed'],
  ['::2', 'allowed'],
  ['fec0::1', 'allowed'],
  ['2001:2::2', 'allowed'],
  ['::ffff:198.18.0.2', 'allowed'],
  ['198.19.0.10', 'allowed'],
];

t.test('dialVerdict', async (t) => {
  for (const [address, want] of CASES) {
    const v = dialVerdict(address, own);
    t.same(v.allowed ? 'allowed' : v.reason, want, JSON.stringify(address));
  }
});

t.test('OwnAddresses ignores what is not an address', async (t) => {
  t.equal(own.size, 4);
});

t.test('DialGuard: fixed addresses, the namespace interfaces and the config node addresses', async (t) => {
  let interfaces = ['10.0.0.1'];
  let reads = 0;
  let now = 0;
  // What the config says of where each node takes tunnels (its Node item).
  const addressesOf: Record<string, string[]> = { n1: ['198.18.0.2', '198.18.0.3'], n2: ['198.18.0.9'] };
  const view = { node: 'n1', nodeAddresses: (node: string) => addressesOf[node] ?? [] };
  const guard = new DialGuard({
    fixed: ['198.18.0.1', undefined],
    view: () => view as never,
    interfaces: () => (reads++, interfaces),
    interfaceRefreshMs: 1_000,
    now: () => now,
  });
  for (const a of ['198.18.0.1', '10.0.0.1', '198.18.0.2', '198.18.0.3']) t.match(guard.check(a), { allowed: false, reason: 'dial-own-address' }, a);
  t.same(guard.check('198.18.0.4'), { allowed: true });
  t.same(guard.check('198.18.0.9'), { allowed: true }, 'another node stays reachable');
  t.equal(reads, 1, 'interfaces read once while fresh');
  interfaces = ['10.0.0.2'];
  t.same(guard.check('10.0.0.2'), { allowed: true }, 'a new address is not seen before the refresh');
  now = 1_000;
  t.match(guard.check('10.0.0.2'), { allowed: false, reason: 'dial-own-address' }, 'and is refused after it');
  t.same(guard.check('10.0.0.1'), { allowed: true }, 'a removed one is no longer refused');
  t.equal(reads, 2);
});
