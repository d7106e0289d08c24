/** Mount discovery, ids and cookies, and the feature report. */
import * as net from 'node:net';

import { t } from 'tap';

import { BpfError, findBpffs, findCgroup2Mount, netnsCookie, parseMounts, probeFeatures, socketCookie } from '../../src/bpf';
import { bpfTest } from '../helpers/bpf';
import { acceptServer } from '../helpers/net';
import { tempNetns } from '../helpers/scratch';

const HYBRID = `sysfs /sys sysfs rw,nosuid 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
bpf /sys/fs/bpf bpf rw,relatime 0 0
`;
const UNIFIED = `cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0
bpf /run/my\\040bpf bpf rw 0 0
bpf /sys/fs/bpf bpf rw 0 0
`;

t.test('mount discovery', async (t) => {
  const table: [string, string, string | undefined, string[]][] = [
    ['hybrid host', HYBRID, '/sys/fs/cgroup/unified', ['/sys/fs/bpf']],
    ['unified host, two bpffs, escaped space', UNIFIED, '/sys/fs/cgroup', ['/sys/fs/bpf', '/run/my bpf']],
    ['no cgroup2, no bpffs', 'proc /proc proc rw 0 0\n', undefined, []],
  ];
  for (const [name, text, cg2, bpffs] of table) {
    const m = parseMounts(text);
    t.equal(findCgroup2Mount(m), cg2, `${name}: cgroup2`);
    t.same(findBpffs(m), bpffs, `${name}: bpffs`);
  }
});

bpfTest(t, 'feature report on this host', async (t) => {
  const f = probeFeatures();
  t.equal(f.usable, true);
  t.same(f.problems, []);
  t.match(f.libbpf, /^\d+\.\d+$/);
  t.equal(f.cgroup2, findCgroup2Mount());
  t.equal(f.progTypes.cgroup_sock_addr, 'yes');
  t.equal(f.mapTypes.ringbuf, 'yes');
});

bpfTest(t, 'netns cookies: stable per namespace, different across namespaces', async (t) => {
  const host = await netnsCookie('/proc/self/ns/net');
  t.equal(await netnsCookie('/proc/self/ns/net'), host, 'stable');
  const ns = tempNetns(t);
  const other = await netnsCookie(ns.path);
  t.not(other, host, 'another namespace has another cookie');
  t.equal(await netnsCookie(ns.path), other);
  // Many at once: each on its own short thread.
  const many = await Promise.all(Array.from({ length: 20 }, (_, i) => netnsCookie(i % 2 ? ns.path : '/proc/self/ns/net')));
  t.same(many, Array.from({ length: 20 }, (_, i) => (i % 2 ? other : host)));
  // The main thread never moved: a socket made now is still in the host namespace.
  const { server, port } = await acceptServer();
  t.teardown(() => server.close());
  await new Promise<void>((resolve, reject) => net.connect(port, '127.0.0.1', resolve).on('error', reject));
  t.equal(await netnsCookie(`/proc/${process.pid}/task/${process.pid}/ns/net`), host, 'the main thread is still in the host netns');

  const e = await netnsCookie('/run/netns/nodemesh-test-does-not-exist').catch((err: unknown) => err);
  t.type(e, BpfError);
  t.match(e, { op: 'netns_cookie', code: 'ENOENT', message: /no such network namespace/ });
});

bpfTest(t, 'socket cookies of connected sockets', async (t) => {
  const { server, port } = await acceptServer();
  t.teardown(() => server.close());
  const a = net.connect(port, '127.0.0.1');
  const b = net.connect(port, '127.0.0.1');
  await Promise.all([a, b].map((s) => new Promise((r) => s.once('connect', r))));
  const ca = socketCookie(a);
  const cb = socketCookie(b);
  t.type(ca, 'bigint');
  t.not(ca, cb);
  t.equal(socketCookie(a), ca, 'stable');
  a.destroy();
  b.destroy();
  t.match(
    (() => {
      try {
        socketCookie(a);
      } catch (err) {
        return err;
      }
    })(),
    { code: 'EBADF', message: /has no file descriptor/ },
  );
});
