/**
 * The bindings against a real kernel: the selftest program attached to a
 * cgroup this test makes, a child process inside it making real connections.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { t } from 'tap';

import { abi, BpfMap, cgroupId, Link, loadObject, RingBuffer, scalar } from '../../src/bpf';
import { bpfObjectPath } from '../../src/paths';
import { bpfTest } from '../helpers/bpf';
import { fixture, runNode } from '../helpers/child';
import { acceptServer, unusedPort } from '../helpers/net';
import { tempCgroup, tempPinDir } from '../helpers/scratch';
import { waitFor } from '../helpers/wait';

const SELFTEST = bpfObjectPath('selftest');
type Event = ReturnType<typeof abi.SelftestEvent.decode>;

/** Programs bpftool sees attached to a cgroup (by name). */
function attachedPrograms(cg: string): string[] {
  const out = execFileSync('bpftool', ['-j', 'cgroup', 'show', cg], { encoding: 'utf8' }).trim();
  return out ? (JSON.parse(out) as { name: string }[]).map((p) => p.name) : [];
}

async function connectFrom(cg: string, port: number, count: number): Promise<{ pid: number; results: string[] }> {
  const r = await runNode(fixture('connect.js'), ['127.0.0.1', String(port), String(count)], { cgroup: cg });
  if (r.code !== 0) throw new Error(`connect.js failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as { pid: number; results: string[] };
}

bpfTest(t, 'connects inside the cgroup are counted, reported and filtered; others are not', async (t) => {
  const cg = tempCgroup(t);
  const { server, port, accepted } = await acceptServer();
  t.teardown(() => server.close());
  const denied = await unusedPort();

  const obj = loadObject(SELFTEST, { globals: { deny_port: denied } });
  t.teardown(() => obj.close());
  t.same(
    obj.programs().map((p) => [p.name, p.type, p.attachType]),
    [
      ['selftest_connect4', 'cgroup_sock_addr', 'cgroup_inet4_connect'],
      ['selftest_connect4_v2', 'cgroup_sock_addr', 'cgroup_inet4_connect'],
    ],
  );
  const conns = obj.map('nm_selftest_conns', { key: abi.SelftestKey, value: abi.SelftestCount });
  const stats = obj.map('nm_selftest_stats', { key: scalar('u32'), value: scalar('u64') });
  const eventsMap = obj.map('nm_selftest_events');
  t.teardown(() => [conns, stats, eventsMap].forEach((m) => m.close()));

  const events: Event[] = [];
  const batches: number[] = [];
  const rb = new RingBuffer(eventsMap, abi.SelftestEvent, {
    onRecords: (records) => {
      batches.push(records.length);
      events.push(...records);
    },
  });
  t.teardown(() => rb.close());

  const link = obj.attachCgroup('selftest_connect4', cg);
  t.teardown(() => link.close());
  const info = link.info();
  t.equal(info.attachType, 'cgroup_inet4_connect');
  t.equal(info.cgroupId, cgroupId(cg), 'the link is on the cgroup the test made');
  t.same(attachedPrograms(cg), ['selftest_connect4']);

  // spawnSync blocks this event loop while the child connects, so all 25
  // records wait in the ring buffer and must arrive as one batch.
  const child = spawnSync('sh', ['-c', 'echo $$ > "$NM_CGROUP/cgroup.procs" && exec "$@"', 'sh', process.execPath, fixture('connect.js'), '127.0.0.1', String(port), '25'], {
    env: { ...process.env, NM_CGROUP: cg },
    encoding: 'utf8',
  });
  const out = JSON.parse(child.stdout) as { pid: number; results: string[] };
  t.same(out.results, new Array(25).fill('ok'), 'every connect reached the server');
  t.ok(await waitFor(() => accepted() >= 25), 'the server accepted them');

  const key = { dst_ip: '127.0.0.1', dst_port: port };
  t.equal(conns.get(key)?.connects, 25n, 'the hash map counted 25 connects to the server');
  t.equal(stats.getSum(0), 25n, 'per-CPU counters sum to 25');
  t.equal(stats.getSum(1), 0n, 'the v2 program has not run');

  t.ok(await waitFor(() => events.length >= 25), 'ring buffer events reached the callback');
  t.equal(batches[0], 25, 'records written while the loop was busy came in one batch');
  t.equal(events.length, 25);
  const cgid = cgroupId(cg);
  t.ok(events.every((e) => e.pid === out.pid && e.cgroup_id === cgid && e.dst_port === port && e.dst_ip === '127.0.0.1'));
  t.ok(events.every((e) => e.variant === 0 && e.verdict === 1));
  t.equal(new Set(events.map((e) => e.cookie)).size, 25, 'each connect had its own socket cookie');
  t.equal(conns.get(key)?.last_cookie, events[24]!.cookie, 'the map and the event agree on the last socket');

  // The const volatile set at load refuses one port, for processes in the cgroup only.
  const refused = await connectFrom(cg, denied, 2);
  t.same(refused.results, ['EPERM', 'EPERM'], 'the denied port is refused inside the cgroup');
  t.ok(await waitFor(() => events.length >= 27));
  t.same(events.slice(25).map((e) => e.verdict), [0, 0], 'refusals are reported as such');

  // The test process is outside the cgroup: not counted.
  const before = conns.get(key)!.connects;
  const outside = await runNode(fixture('connect.js'), ['127.0.0.1', String(port), '3']);
  t.same((JSON.parse(outside.stdout) as { results: string[] }).results, ['ok', 'ok', 'ok']);
  t.equal(conns.get(key)!.connects, before, 'connects from outside the cgroup are not seen');

  // Close stops delivery.
  rb.close();
  rb.close();
  await connectFrom(cg, port, 2);
  await new Promise((r) => setTimeout(r, 100));
  t.equal(events.length, 27, 'a closed ring buffer delivers nothing more');
});

bpfTest(t, 'pins outlive their handles, reload reuses them, links update atomically and detach', async (t) => {
  const cg = tempCgroup(t);
  const pins = tempPinDir(t);
  const { server, port } = await acceptServer();
  t.teardown(() => server.close());
  const denied = await unusedPort();
  const key = { dst_ip: '127.0.0.1', dst_port: port };
  const codecs = { key: abi.SelftestKey, value: abi.SelftestCount };

  // First run: load with a pin root, attach, pin the link, then drop every handle.
  {
    const obj = loadObject(SELFTEST, { pinRoot: pins, globals: { deny_port: denied } });
    const pinned = obj.maps().filter((m) => m.pinned).map((m) => m.name);
    t.same(pinned, ['nm_selftest_conns'], 'maps marked LIBBPF_PIN_BY_NAME are pinned');
    t.ok(fs.existsSync(path.join(pins, 'nm_selftest_conns')));
    const link = obj.attachCgroup('selftest_connect4', cg);
    link.pin(path.join(pins, 'links', 'connect4'));
    await connectFrom(cg, port, 3);
    link.close();
    obj.close();
    obj.close(); // safe twice
  }

  // Nothing of ours is open now; the pinned link still enforces.
  t.same((await connectFrom(cg, denied, 1)).results, ['EPERM'], 'the pinned link survives its process handles');
  await connectFrom(cg, port, 2);
  const conns = BpfMap.openPinned(path.join(pins, 'nm_selftest_conns'), codecs);
  t.teardown(() => conns.close());
  t.equal(conns.get(key)?.connects, 5n, 'the pinned map kept counting');

  const link = Link.openPinned(path.join(pins, 'links', 'connect4'));
  t.teardown(() => link.close());
  t.equal(link.info().attached, true);
  t.equal(link.info().cgroupId, cgroupId(cg));

  // Second run: same pin root, so the pinned map is reused, not recreated.
  const obj2 = loadObject(SELFTEST, { pinRoot: pins, globals: { deny_port: 0 } });
  t.teardown(() => obj2.close());
  const conns2 = obj2.map('nm_selftest_conns', codecs);
  t.teardown(() => conns2.close());
  t.equal(conns2.info.id, conns.info.id, 'the reload reused the pinned map');
  const stats2 = obj2.map('nm_selftest_stats', { key: scalar('u32'), value: scalar('u64') });
  t.teardown(() => stats2.close());

  // Swap the attached program for the new object's v2, which refuses nothing.
  link.update(obj2, 'selftest_connect4_v2');
  t.same(attachedPrograms(cg), ['selftest_connect4_v2'], 'the link now runs v2');
  t.same((await connectFrom(cg, denied, 1)).results, ['ECONNREFUSED'], 'v2 lets the formerly denied port through');
  await connectFrom(cg, port, 4);
  t.equal(stats2.getSum(1), 5n, 'v2 counted in its own slot');
  t.equal(conns.get(key)?.connects, 9n, 'into the same pinned map');

  // Detach: the program no longer runs, although the link is still pinned.
  link.detach();
  t.equal(link.info().attached, false);
  t.same(attachedPrograms(cg), [], 'bpftool lists nothing on the cgroup');
  await connectFrom(cg, port, 3);
  t.equal(conns.get(key)?.connects, 9n, 'after detach nothing is counted');

  t.equal(link.unpin(), true);
  t.equal(conns.unpin(), true);
  t.equal(link.unpin(), false, 'a second unpin has nothing to remove');
  const left = fs.readdirSync(pins, { recursive: true, withFileTypes: true }).filter((d) => !d.isDirectory());
  t.same(left.map((d) => d.name), [], 'no pins remain');
});
