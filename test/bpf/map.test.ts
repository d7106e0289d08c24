/** Map operations on real kernel maps of the selftest object. */
import * as path from 'node:path';

import { t } from 'tap';

import { abi, BpfMap, loadObject, scalar } from '../../src/bpf';
import { bpfObjectPath } from '../../src/paths';
import { bpfTest } from '../helpers/bpf';
import { thrown } from '../helpers/errors';
import { tempCgroup, tempPinDir } from '../helpers/scratch';

const SELFTEST = bpfObjectPath('selftest');
const codecs = { key: abi.SelftestKey, value: abi.SelftestCount };


bpfTest(t, 'hash map: get, set with flags, delete, iterate, batches, full', async (t) => {
  const obj = loadObject(SELFTEST);
  t.teardown(() => obj.close());
  t.same(obj.maps().filter((m) => m.pinned), [], 'without a pin root nothing is pinned');
  const conns = obj.map('nm_selftest_conns', codecs);
  t.teardown(() => conns.close());
  t.match(conns.info, { type: 'hash', keySize: 8, valueSize: 16, maxEntries: 1024, perCpu: false });

  const k1 = { dst_ip: '198.18.0.1', dst_port: 80 };
  const k2 = { dst_ip: '198.18.0.2', dst_port: 443 };
  t.equal(conns.get(k1), undefined);
  t.equal(conns.has(k1), false);
  conns.set(k1, { connects: 1n, last_cookie: 7n });
  t.same(conns.get(k1), { connects: 1n, last_cookie: 7n });
  t.equal(conns.has(k1), true);

  let e = thrown(() => conns.set(k1, { connects: 2n, last_cookie: 0n }, 'noexist'));
  t.match(e, { op: 'map_update', code: 'EEXIST', errno: 17 });
  t.same(conns.get(k1), { connects: 1n, last_cookie: 7n }, 'a refused update changes nothing');
  e = thrown(() => conns.set(k2, { connects: 2n, last_cookie: 0n }, 'exist'));
  t.match(e, { op: 'map_update', code: 'ENOENT' });
  conns.set(k1, { connects: 5n, last_cookie: 8n }, 'exist');
  t.equal(conns.get(k1)?.connects, 5n);

  conns.set(k2, { connects: 2n, last_cookie: 9n });
  t.same([...conns.keys()].sort((a, b) => a.dst_port - b.dst_port), [k1, k2], 'keys() walks every key');
  t.same(conns.take(k2), { connects: 2n, last_cookie: 9n }, 'take() returns and removes');
  t.equal(conns.has(k2), false);
  t.equal(conns.delete(k1), true);
  t.equal(conns.delete(k1), false, 'deleting an absent key says so');
  t.equal(conns.count(), 0);

  // Batches larger than one kernel batch (256).
  const many = Array.from({ length: 1000 }, (_, i) => [
    { dst_ip: `198.18.${i >> 8}.${i & 255}`, dst_port: 1000 + i },
    { connects: BigInt(i), last_cookie: BigInt(i * 2) },
  ] as [typeof k1, { connects: bigint; last_cookie: bigint }]);
  t.equal(conns.setMany(many), 1000);
  const all = conns.entries();
  t.equal(all.length, 1000, 'entries() reads every entry');
  const byPort = new Map(all.map(([k, v]) => [k.dst_port, [k, v] as const]));
  t.ok(many.every(([k, v]) => byPort.get(k.dst_port)?.[1].connects === v.connects && byPort.get(k.dst_port)?.[0].dst_ip === k.dst_ip));
  t.equal(conns.deleteMany(many.slice(0, 300).map(([k]) => k)), 300);
  t.equal(conns.count(), 700);

  // Full: 1024 entries max.
  conns.setMany(Array.from({ length: 324 }, (_, i) => [{ dst_ip: '198.19.0.1', dst_port: i + 1 }, { connects: 0n, last_cookie: 0n }]));
  t.equal(conns.count(), 1024);
  e = thrown(() => conns.set({ dst_ip: '198.19.0.2', dst_port: 1 }, { connects: 0n, last_cookie: 0n }));
  t.match(e, { op: 'map_update', code: 'E2BIG' });
  t.match(e.message, /map is full/);
  t.equal(conns.clear(), 1024);
  t.equal(conns.count(), 0);
});

bpfTest(t, 'per-CPU array: values per CPU, sums, and guarded single-value access', async (t) => {
  const obj = loadObject(SELFTEST);
  t.teardown(() => obj.close());
  const stats = obj.map('nm_selftest_stats', { key: scalar('u32'), value: scalar('u64') });
  t.teardown(() => stats.close());
  const ncpu = stats.info.possibleCpus;
  t.ok(stats.info.perCpu);
  t.equal(stats.info.valueBufferSize, 8 * ncpu);

  const values = Array.from({ length: ncpu }, (_, i) => BigInt(10 + i));
  stats.setPerCpu(1, values);
  t.same(stats.getPerCpu(1), values);
  t.equal(stats.getSum(1), values.reduce((a, b) => a + b, 0n));
  stats.setPerCpu(0, 3n);
  t.equal(stats.getSum(0), 3n * BigInt(ncpu), 'one value is written to every CPU');
  t.same(
    stats.entries().map(([k, v]) => [k, v]),
    [
      [0, 3n * BigInt(ncpu)],
      [1, values.reduce((a, b) => a + b, 0n)],
    ],
    'entries() of a per-CPU map gives sums',
  );
  t.match(thrown(() => stats.get(0)), { code: 'EINVAL', message: /per-CPU/ });
  t.match(thrown(() => stats.setPerCpu(0, [1n])), { code: 'EINVAL', message: new RegExp(`needs ${ncpu} per-CPU values`) });
  t.equal(stats.count(), 2, 'an array has all its slots');
});

bpfTest(t, 'sizes are checked before the kernel sees a buffer', async (t) => {
  const obj = loadObject(SELFTEST);
  t.teardown(() => obj.close());
  const raw = obj.map('nm_selftest_conns');
  t.teardown(() => raw.close());

  let e = thrown(() => raw.get(Buffer.alloc(3)));
  t.match(e, { op: 'map_key', code: 'EINVAL', errno: 22 });
  t.match(e.message, /8-byte keys, got 3 bytes/);
  e = thrown(() => raw.set(Buffer.alloc(8), Buffer.alloc(4)));
  t.match(e, { op: 'map_value', code: 'EINVAL', message: /16-byte values, got 4 bytes/ });
  const typed = obj.map('nm_selftest_conns', codecs);
  t.teardown(() => typed.close());
  e = thrown(() => typed.get({ dst_ip: 'not-an-ip', dst_port: 1 }));
  t.match(e, { op: 'map_key', code: 'EINVAL', message: /not an IPv4 address: not-an-ip/ });
  e = thrown(() => raw.getInto(Buffer.alloc(8), Buffer.alloc(15)));
  t.match(e.message, /16-byte values, got 15 bytes/, 'the addon checks too');
  t.equal(raw.getInto(Buffer.alloc(8), Buffer.alloc(16)), false);

  e = thrown(() => obj.map('nm_selftest_conns', { key: scalar('u32'), value: abi.SelftestCount }));
  t.match(e, { op: 'map_open', code: 'EINVAL' });
  t.match(e.message, /8-byte keys .* u32 \(4 bytes\)/);
  t.match(thrown(() => obj.map('no_such_map')), { op: 'map_open', code: 'ENOENT' });
});

bpfTest(t, 'closed handles refuse use with EBADF and never crash', async (t) => {
  const obj = loadObject(SELFTEST);
  const conns = obj.map('nm_selftest_conns', codecs);
  const link = obj.attachCgroup('selftest_connect4', tempCgroup(t));
  conns.close();
  conns.close();
  link.close();
  link.close();
  obj.close();
  obj.close();
  t.ok(conns.closed && link.closed && obj.closed);
  const k = { dst_ip: '198.18.0.1', dst_port: 80 };
  t.match(thrown(() => conns.get(k)), { op: 'map_lookup', code: 'EBADF', message: /is closed/ });
  t.match(thrown(() => conns.set(k, { connects: 1n, last_cookie: 1n })), { op: 'map_update', code: 'EBADF' });
  t.match(thrown(() => [...conns.keys()]), { code: 'EBADF' });
  t.match(thrown(() => conns.entries()), { code: 'EBADF' });
  t.match(thrown(() => link.info()), { op: 'link_info', code: 'EBADF' });
  t.match(thrown(() => link.detach()), { code: 'EBADF' });
  t.match(thrown(() => obj.programs()), { code: 'EBADF', message: /is closed/ });
  t.match(thrown(() => obj.map('nm_selftest_conns')), { code: 'EBADF' });
  t.match(thrown(() => obj.attachCgroup('selftest_connect4', '/sys/fs/cgroup')), { code: 'EBADF' });
});

bpfTest(t, 'opening pins: missing path and wrong kind are named', async (t) => {
  const pins = tempPinDir(t);
  const obj = loadObject(SELFTEST, { pinRoot: pins });
  t.teardown(() => obj.close());
  const link = obj.attachCgroup('selftest_connect4', tempCgroup(t));
  t.teardown(() => link.close());
  link.pin(path.join(pins, 'link'));
  let e = thrown(() => BpfMap.openPinned(path.join(pins, 'link')));
  t.match(e, { op: 'map_open', code: 'EINVAL' });
  t.match(e.message, /is a pinned link, not a map/);
  e = thrown(() => BpfMap.openPinned(path.join(pins, 'nothing-here')));
  t.match(e, { op: 'map_open', code: 'ENOENT', message: /nothing is pinned there/ });
  link.unpin();
});
