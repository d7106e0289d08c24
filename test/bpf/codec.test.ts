/** Struct codecs: tables of layouts and round trips (pure, no kernel). */
import { t } from 'tap';

import { bytes, scalar, struct } from '../../src/bpf';

t.test('layout follows C order and refuses holes', async (t) => {
  const c = struct('x', { a: 'u32', b: 'u16', c: 'u8', d: 'u8', e: 'u64', f: 'ipv6', g: 'pad8' });
  t.same(
    c.fields.map((f) => [f.name, f.offset, f.size]),
    [
      ['a', 0, 4],
      ['b', 4, 2],
      ['c', 6, 1],
      ['d', 7, 1],
      ['e', 8, 8],
      ['f', 16, 16],
      ['g', 32, 8],
    ],
  );
  t.equal(c.size, 40);

  const bad: [string, () => unknown, RegExp][] = [
    ['misaligned u32', () => struct('m', { a: 'u8', b: 'u32' }), /field b \(u32\) at offset 1 is not 4-byte aligned/],
    ['misaligned u64', () => struct('m', { a: 'u32', b: 'u64' }), /field b \(u64\) at offset 4 is not 8-byte aligned/],
    ['tail padding', () => struct('m', { a: 'u64', b: 'u32' }), /size 12 is not a multiple of its alignment 8/],
    ['unknown type', () => struct('m', { a: 'u128' as 'u64' }), /unknown field type u128/],
  ];
  for (const [name, fn, msg] of bad) t.throws(fn, msg, name);
});

t.test('round trips', async (t) => {
  const c = struct('rt', {
    port: 'u16',
    nport: 'be16',
    ip: 'ipv4',
    cookie: 'u64',
    ip6: 'ipv6',
    raw: 'bytes4',
    _pad: 'pad4',
  });
  const cases = [
    { port: 80, nport: 443, ip: '198.18.0.1', cookie: 1n, ip6: '::1', raw: Buffer.from([1, 2, 3, 4]) },
    { port: 65535, nport: 1, ip: '255.255.255.255', cookie: 2n ** 64n - 1n, ip6: 'fd00:1:2::3', raw: Buffer.alloc(4) },
    { port: 0, nport: 0, ip: '0.0.0.0', cookie: 0n, ip6: '2001:db8::ff00:42:8329', raw: Buffer.alloc(4, 9) },
    { port: 1, nport: 2, ip: '10.0.0.1', cookie: 3n, ip6: '1:2:3:4:5:6:7:8', raw: Buffer.alloc(4) },
  ];
  for (const v of cases) {
    const buf = c.encode(v);
    t.equal(buf.length, c.size);
    t.same(c.decode(buf), v, `${v.ip} ${v.ip6}`);
  }
  // Byte order on the wire of the struct.
  const buf = c.encode(cases[0]!);
  t.same([...buf.subarray(2, 4)], [1, 187], 'be16 is network order');
  t.same([...buf.subarray(4, 8)], [198, 18, 0, 1], 'ipv4 is network order');
  t.same([...buf.subarray(36, 40)], [0, 0, 0, 0], 'padding is zero');
});

t.test('ipv6 text forms', async (t) => {
  const c = struct('v6', { a: 'ipv6' });
  const table: [string, string][] = [
    ['::', '::'],
    ['0:0:0:0:0:0:0:1', '::1'],
    ['fd00:0:0:0:0:0:0:0', 'fd00::'],
    ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'],
    ['::ffff:198.18.0.1', '::ffff:c612:1'],
    ['1:0:2:0:3:0:4:0', '1:0:2:0:3:0:4:0'],
  ];
  for (const [input, canonical] of table) t.equal(c.decode(c.encode({ a: input })).a, canonical, input);
  t.throws(() => c.encode({ a: '198.18.0.1' }), /not an IPv6 address/);
});

t.test('encode into a shared buffer at an offset, and bad values', async (t) => {
  const c = struct('k', { ip: 'ipv4', port: 'u16', _pad: 'pad2' });
  const out = Buffer.alloc(24, 0xff);
  c.encode({ ip: '1.2.3.4', port: 5 }, out, 8);
  t.same(c.decode(out, 8), { ip: '1.2.3.4', port: 5 });
  t.same([...out.subarray(0, 8)], new Array(8).fill(0xff), 'bytes before are untouched');
  t.same([...out.subarray(14, 16)], [0, 0], 'padding is zeroed');
  t.throws(() => c.encode({ ip: '1.2.3', port: 5 }), /not an IPv4 address/);
  t.throws(() => c.encode({ ip: '1.2.3.4' } as never), /field port is missing/);
  t.throws(() => c.decode(Buffer.alloc(7)), /need 8 bytes, got 7/);
  t.equal(scalar('u32').decode(scalar('u32').encode(0xdeadbeef)), 0xdeadbeef);
  t.equal(bytes(3).decode(Buffer.from([1, 2, 3])).length, 3);
  t.throws(() => bytes(3).encode(Buffer.alloc(2)), /expected a 3-byte Buffer/);
});
