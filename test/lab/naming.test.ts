/** The lab's address and name plan (pure). */
import { t } from 'tap';

import { LabError, planLab } from '../../src/lab';

t.test('slots, nodes and pods get the documented addresses and names', async (t) => {
  const table: [string, number, number, number, Record<string, unknown>][] = [
    ['slot 0', 0, 2, 2, { bridge: 'nm-lab-br', bridgeIp: '198.18.0.254', n2ip: '198.18.0.2', n2pods: '198.18.2.0/24', pod: ['n2-p1', '198.18.2.1', 'nm-lab-n2-p1'] }],
    ['slot 3', 3, 2, 1, { bridge: 'nm-lab-br', bridgeIp: '198.18.48.254', n2ip: '198.18.48.2', n2pods: '198.18.50.0/24', pod: ['n2-p1', '198.18.50.1', 'nm-lab-n2-p1'] }],
    ['slot 15, node 15', 15, 15, 1, { bridge: 'nm-lab-br', bridgeIp: '198.18.240.254', n2ip: '198.18.240.2', n2pods: '198.18.242.0/24', pod: ['n2-p1', '198.18.242.1', 'nm-lab-n2-p1'] }],
  ];
  for (const [name, slot, nodes, pods, want] of table) {
    const p = planLab('lab', slot, nodes, pods, '/sys/fs/cgroup');
    t.equal(p.bridge, want.bridge, `${name}: bridge`);
    t.equal(p.bridgeIp, want.bridgeIp, `${name}: bridge ip`);
    t.equal(p.nodes[1]!.ip, want.n2ip, `${name}: node 2 ip`);
    t.equal(p.nodes[1]!.podSubnet, want.n2pods, `${name}: node 2 pods`);
    const pod = p.pods.find((x) => x.name === 'n2-p1')!;
    t.same([pod.name, pod.ip, pod.netns], want.pod, `${name}: pod n2-p1`);
    t.equal(p.nodes.length, nodes);
    t.equal(p.pods.length, nodes * pods);
  }
  const last = planLab('abcdefgh', 15, 15, 253, '/sys/fs/cgroup/unified');
  for (const n of last.nodes) t.ok(n.hostIf.length <= 15, `${n.hostIf} fits in 15 characters`);
  t.ok(last.bridge.length <= 15);
  t.equal(last.pods.at(-1)!.ip, '198.18.255.253', 'the last slot ends inside 198.18.0.0/16');
  t.equal(last.pods.at(-1)!.ip6, '2001:2:0:255::253', 'IPv6 mirrors IPv4 inside 2001:2::/48');
  t.equal(last.nodes[1]!.ip6, '2001:2:0:240::2');
  t.equal(last.nodes[1]!.podGateway6, '2001:2:0:242::254');
  t.equal(last.nodes[0]!.cgroup, '/sys/fs/cgroup/unified/nodemesh-lab/abcdefgh-n1');
  t.equal(last.pods[0]!.cgroup, '/sys/fs/cgroup/unified/nodemesh-lab/abcdefgh-n1/p1');
});

t.test('bad sizes and names are refused with the reason', async (t) => {
  const bad: [string, () => unknown, RegExp][] = [
    ['name too long', () => planLab('abcdefghi', 0, 1, 1, '/c'), /1-8 lowercase letters or digits/],
    ['name with a dash', () => planLab('a-b', 0, 1, 1, '/c'), /lab name "a-b"/],
    ['no nodes', () => planLab('a', 0, 0, 1, '/c'), /--nodes 0: a lab has 1 to 15 nodes/],
    ['too many nodes', () => planLab('a', 0, 16, 1, '/c'), /1 to 15 nodes/],
    ['too many pods', () => planLab('a', 0, 1, 254, '/c'), /0 to 253 pods/],
    ['slot out of range', () => planLab('a', 16, 1, 1, '/c'), /slot 16/],
  ];
  for (const [name, fn, msg] of bad) {
    t.throws(fn, msg, name);
    t.throws(fn, LabError, `${name}: a LabError`);
  }
});
