/**
 * The node proxy counts an IPv6 peer of 15008 by its /64, as the controller
 * does: a host given a /64 cannot take a fresh source address per connection
 * to get past the per-peer handshake bound. Node n2 of a lab opens silent
 * connections to n1's tunnel port from 24 addresses of its own /64; n1 takes
 * 16 handshakes from that /64 and refuses the other 8 at once, while
 * traffic between the nodes keeps flowing.
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

bpfTest(t, 'silent connections to 15008 from many addresses of one IPv6 /64 share one per-peer handshake bound', async (t) => {
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
  const script = `
    const net = require('net'); let connected = 0, closed = 0; const socks = [];
    for (const a of ${JSON.stringify(sources)}) {
      const s = net.connect({ port: 15008, host: '${n1!.ip6}', localAddress: a }); s.on('error', () => {});
      s.on('connect', () => connected++); s.on('close', () => closed++); socks.push(s);
    }
    setInterval(() => console.log(JSON.stringify({ connected, closed })), 200);
    setTimeout(() => process.exit(0), 60000);`;
  const flood = await labProcess(t, lab, n2!.name, [process.execPath, '-e', script], new RegExp(`"connected":${SOURCES}`));
  const refusedAtOnce = SOURCES - PER_PEER;
  t.ok(await waitFor(async () => (await rejected(lab, n1!.name, 'handshakes-per-peer')) >= refusedAtOnce, 20_000, 100), 'n1 refused the connections over the /64 share');
  t.equal(await rejected(lab, n1!.name, 'handshakes-per-peer'), refusedAtOnce, `${PER_PEER} handshakes from the /64 held, ${refusedAtOnce} refused (${flood.output().trim().split('\n').at(-1)})`);
  t.same(await whoami(lab, 'n2-p1', lab.pods.find((p) => p.name === 'n1-p1')!.ip), ['n1-p1'], 'meanwhile: n2 -> n1 still flows');
});
