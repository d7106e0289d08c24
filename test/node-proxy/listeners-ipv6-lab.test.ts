/**
 * The node proxy counts each IPv6 peer of 15008 by its own address, not by
 * its /64: the nodes of a cluster commonly share one subnet (a lab's do), and
 * one share for all of them would cap every node's tunnels to a peer. Node n2
 * of a lab takes 24 more addresses of its /64 and opens one silent connection
 * to n1's tunnel port from each, and more than the per-peer bound from its own
 * address: n1 holds every one of the 24 and refuses only what one address
 * holds over the bound, while traffic between the nodes keeps flowing.
 */
import { t } from 'tap';

import type { LabState } from '../../src/lab';
import { LISTENER_DEFAULTS } from '../../src/node-proxy/listeners';
import { bpfTest } from '../helpers/bpf';
import { fixture } from '../helpers/child';
import { labProcess, labRun, testLab } from '../helpers/lab';
import { waitFor } from '../helpers/wait';

const SOURCES = 24;
const PER_PEER = LISTENER_DEFAULTS.tunnel.maxHandshakesPerPeer;

async function whoami(lab: LabState, pod: string, ip: string): Promise<unknown> {
  const r = await labRun(lab, pod, [process.execPath, fixture('mesh-client.js'), 'whoami', ip, '8081', '1']);
  if (r.code !== 0) throw new Error(`mesh-client in ${pod}: ${r.code} ${r.stderr}`);
  return (JSON.parse(r.stdout) as { answers: unknown }).answers;
}

async function rejected(lab: LabState, node: string, reason: string): Promise<number> {
  const m = await labRun(lab, node, [process.execPath, '-e', "fetch('http://127.0.0.1:15020/metrics').then(r=>r.text()).then(t=>process.stdout.write(t))"]);
  const line = new RegExp(`^nodemesh_listener_rejected_total\\{listener="tunnel",reason="${reason}"\\} (\\d+)$`, 'm').exec(m.stdout);
  return line ? Number(line[1]) : 0;
}

bpfTest(t, 'addresses of one IPv6 /64 each have their own per-peer handshake bound on 15008', async (t) => {
  const lab = await testLab(t, 2, 1, true);
  const [n1, n2] = lab.nodes;
  await labProcess(t, lab, 'n1-p1', [process.execPath, fixture('mesh-server.js'), 'n1-p1'], /serving/);
  t.same(await whoami(lab, 'n2-p1', lab.pods.find((p) => p.name === 'n1-p1')!.ip), ['n1-p1'], 'before: n2 -> n1');

  // Addresses of n2's own /64 (the lab bridge's), beside the one it has; gone with its namespace.
  const prefix = n2!.ip6.slice(0, n2!.ip6.lastIndexOf('::'));
  const sources = Array.from({ length: SOURCES }, (_, i) => `${prefix}::${(0x1000 + i).toString(16)}`);
  const failed: string[] = [];
  for (const a of sources) {
    const r = await labRun(lab, n2!.name, ['ip', '-6', 'addr', 'add', `${a}/64`, 'dev', 'eth0', 'nodad']);
    if (r.code !== 0) failed.push(`${a}: ${r.stderr.trim()}`);
  }
  t.same(failed, [], `n2 holds ${SOURCES} more addresses of its /64`);
  const OVER = 4;
  const fromOne = Array.from({ length: PER_PEER + OVER }, () => n2!.ip6);
  const script = `
    const net = require('net'); let connected = 0, closed = 0; const socks = [];
    for (const a of ${JSON.stringify([...sources, ...fromOne])}) {
      const s = net.connect({ port: 15008, host: '${n1!.ip6}', localAddress: a }); s.on('error', () => {});
      s.on('connect', () => connected++); s.on('close', () => closed++); socks.push(s);
    }
    setInterval(() => console.log(JSON.stringify({ connected, closed })), 200);
    setTimeout(() => process.exit(0), 60000);`;
  const flood = await labProcess(t, lab, n2!.name, [process.execPath, '-e', script], new RegExp(`"connected":${SOURCES + PER_PEER + OVER}`));
  t.ok(await waitFor(async () => (await rejected(lab, n1!.name, 'handshakes-per-peer')) >= OVER, 20_000, 100), 'n1 refused what one address held over its bound');
  const last = (): { connected: number; closed: number } => JSON.parse(flood.output().trim().split('\n').at(-1)!) as { connected: number; closed: number };
  t.equal(await rejected(lab, n1!.name, 'handshakes-per-peer'), OVER, `only the ${OVER} over one address's bound were refused, none of the other ${SOURCES} addresses of its /64 (${JSON.stringify(last())})`);
  t.same(await whoami(lab, 'n2-p1', lab.pods.find((p) => p.name === 'n1-p1')!.ip), ['n1-p1'], 'meanwhile: n2 -> n1 still flows');
});
