/**
 * File descriptors are the point: a real `nodemesh controller` process under
 * `ulimit -n 512` is flooded with silent connections from many addresses.
 * It must refuse them before accept() runs out of descriptors, so a new
 * admin, a new node and /metrics still get in, and the node's config stream
 * keeps receiving.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';

import { t } from 'tap';

import { spiffeNodeId } from '../../../src/controller/ca';
import { ControllerClient, loadCredentials } from '../../../src/controller/client';
import { generateKeyAndCsr } from '../../../src/node-proxy/identity';
import { ConfigStream } from '../../../src/node-proxy/state';
import { PACKAGE_ROOT } from '../../../src/paths';
import { doc, httpGet, sample, tempDir } from '../../helpers/controller';
import { rawH2, silentTcp } from '../../helpers/raw-h2';
import { waitFor } from '../../helpers/wait';

const BIN = path.join(PACKAGE_ROOT, 'bin', 'nodemesh.js');
const NOFILE = 512;

function startChild(dataDir: string): Promise<{ child: ChildProcess; port: number; metricsPort: number }> {
  const args = [BIN, 'controller', '--data-dir', dataDir, '--listen', '127.0.0.1:0', '--metrics-listen', '127.0.0.1:0', '--log-level', 'warn', '--handshake-timeout', '5m'];
  const child = spawn('sh', ['-c', `ulimit -n ${NOFILE} && exec "$0" "$@"`, process.execPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stderr!.resume();
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /serving on port (\d+) \(metrics (\d+)\)/.exec(out);
      if (m) resolve({ child, port: Number(m[1]), metricsPort: Number(m[2]) });
    });
    child.once('exit', (code) => reject(new Error(`controller exited (${code}) before serving: ${out}`)));
  });
}

const workload = (i: number) => ({
  apiVersion: 'nodemesh.io/v1alpha1',
  kind: 'Workload',
  metadata: { name: `w-${i}`, namespace: 'fd' },
  spec: { node: 'n1', serviceAccount: 'default', addresses: [`198.18.1.${i + 1}`] },
});

async function joinNode(admin: ControllerClient, file: string, node: string): Promise<ControllerClient> {
  const creds = loadCredentials(file);
  const { token } = await admin.createToken(node);
  const anon = new ControllerClient({ address: creds.controller, ca: creds.ca }, { timeoutMs: 5000 });
  try {
    const { keyPem, csrPem } = await generateKeyAndCsr(spiffeNodeId('cluster.local', node));
    const cert = await anon.join(token, node, csrPem);
    return new ControllerClient({ address: creds.controller, ca: cert.trustBundlePem, cert: cert.certificateChainPem, key: keyPem }, { timeoutMs: 5000 });
  } finally {
    anon.close();
  }
}

t.test(`a controller under ulimit -n ${NOFILE} keeps serving through a connection flood`, async (t) => {
  const dataDir = tempDir(t, 'nodemesh-fd-');
  const { child, port, metricsPort } = await startChild(dataDir);
  t.teardown(() => child.kill('SIGKILL'));
  const file = path.join(dataDir, 'admin.json');
  const admin = ControllerClient.fromCredentials(file, { timeoutMs: 5000 });
  t.teardown(() => admin.close());
  await admin.apply([doc(workload(0))]);
  const n1 = await joinNode(admin, file, 'n1');
  t.teardown(() => n1.close());
  const s1 = new ConfigStream({ client: n1, node: 'n1' });
  s1.start();
  t.teardown(() => s1.stop());
  t.ok(await waitFor(() => s1.state.version > 0, 10_000), 'n1 holds its config');

  // 400 silent connections from each of two addresses: more than the process has descriptors.
  const flood = ['127.0.0.2', '127.0.0.3'].flatMap((a) => Array.from({ length: 400 }, () => silentTcp(port, a)));
  t.teardown(() => flood.forEach((x) => x.socket.destroy()));
  t.ok(await waitFor(() => flood.filter((x) => x.isClosed()).length === 800 - 2 * 8, 30_000), 'each address holds 8 handshakes, the rest are refused');
  const metrics = async (): Promise<string> => (await httpGet(metricsPort, '/metrics')).body;
  // Counted now: the later sessions come in rounds whose slots the server may free a moment after their clients finish TLS.
  t.equal(sample(await metrics(), 'nodemesh_controller_listener_rejected_total', { listener: 'grpc', reason: 'handshake_limit' }), 800 - 2 * 8, 'refused handshakes are counted');

  const fresh = ControllerClient.fromCredentials(file, { timeoutMs: 5000 });
  t.teardown(() => fresh.close());
  const r = await fresh.apply([doc(workload(1))]);
  t.ok(r.version > 0, 'a new admin connection applies');
  t.ok(await waitFor(() => s1.state.version >= r.version, 10_000), 'n1 receives it');
  const n2 = await joinNode(fresh, file, 'n2');
  t.teardown(() => n2.close());
  const s2 = new ConfigStream({ client: n2, node: 'n2' });
  s2.start();
  t.teardown(() => s2.stop());
  t.ok(await waitFor(() => s2.state.version >= r.version, 10_000), 'a new node joins and receives its config');

  // Sessions that finish TLS and then idle, 64 from each of six addresses: the total stops them, below the descriptor limit.
  // (In rounds of 8 per address, within the per-peer handshake bound.)
  const ca = loadCredentials(file).ca;
  const sessions: PromiseSettledResult<Awaited<ReturnType<typeof rawH2>>>[] = [];
  for (let round = 0; round < 8; round++)
    sessions.push(...(await Promise.allSettled(Array.from({ length: 6 }, (_, i) => `127.0.1.${i + 1}`).flatMap((a) => Array.from({ length: 8 }, () => rawH2({ port, ca, localAddress: a }))))));
  t.teardown(() => sessions.forEach((x) => x.status === 'fulfilled' && x.value.socket.destroy()));
  const text = await metrics();
  t.ok(sample(text, 'nodemesh_controller_listener_rejected_total', { listener: 'grpc', reason: 'total_limit' }) > 0, 'the total bound refused some');
  t.ok(sessions.some((x) => x.status === 'rejected'), 'and their clients saw it');
  const open = sample(text, 'nodemesh_controller_listener_connections', { listener: 'grpc' });
  t.ok(open < NOFILE, `${open} gRPC connections open, under the descriptor limit`);
  const r2 = await admin.apply([doc(workload(2))]);
  t.ok(await waitFor(() => s1.state.version >= r2.version && s2.state.version >= r2.version, 10_000), 'both nodes still receive config at the total bound');
  t.equal((await httpGet(metricsPort, '/healthz')).status, 200, '/healthz answers');
  t.equal(child.exitCode, null, 'the controller is still running');
});
