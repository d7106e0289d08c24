/**
 * Every layout in src/bpf/abi.ts matches the C struct the object was built
 * with, as its BTF records it: size, and each member's offset and size.
 */
import { t } from 'tap';

import { abi, openObject } from '../../src/bpf';
import { bpfObjectPath } from '../../src/paths';

for (const { object, codec } of abi.ABI_STRUCTS) {
  t.test(`struct ${codec.name} (${object}.bpf.o)`, async (t) => {
    // Opening parses the ELF and its BTF; nothing is loaded into the kernel.
    const obj = openObject(bpfObjectPath(object));
    t.teardown(() => obj.close());
    const btf = obj.btfStruct(codec.name);
    if (!btf) return void t.fail(`struct ${codec.name} is not in ${object}.bpf.o's BTF (keep it with NM_BTF_KEEP or use it in a map)`);
    t.equal(codec.size, btf.size, 'size');
    t.same(
      codec.fields.map((f) => [f.name, f.offset, f.size]),
      btf.members.map((m) => [m.name, m.offset, m.size]),
      'members: name, offset, size',
    );
  });
}

t.test('enum nm_stat matches STATS', async (t) => {
  const obj = openObject(bpfObjectPath('redirect'));
  t.teardown(() => obj.close());
  const e = obj.btfEnum('nm_stat');
  if (!e) return void t.fail('enum nm_stat is not in redirect.bpf.o BTF');
  const expected: Record<string, number> = Object.fromEntries(abi.STATS.map((s, i) => [`NM_STAT_${s.toUpperCase()}`, i]));
  expected.NM_STAT_MAX = abi.STATS.length;
  t.same(e, expected);
});

t.test('a codec that disagrees with BTF is caught', async (t) => {
  const obj = openObject(bpfObjectPath('selftest'));
  t.teardown(() => obj.close());
  const btf = obj.btfStruct('nm_selftest_key')!;
  const wrong = [
    ['dst_port', 0, 2],
    ['dst_ip', 4, 4],
  ];
  t.not(JSON.stringify(btf.members.map((m) => [m.name, m.offset, m.size])), JSON.stringify(wrong));
  t.equal(obj.btfStruct('no_such_struct'), null);
});
