/**
 * The node's session with a real controller (TLS, gRPC): the token comes from
 * a file or the environment and never from argv; a short node certificate is
 * renewed at half life and the controller connection, config stream included,
 * moves to the renewed one, so the node keeps working after the first
 * certificate expired.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { t } from 'tap';

import { spiffeWorkloadId } from '../../../src/controller/ca';
import { ControllerClient } from '../../../src/controller/client';
import { startController } from '../../../src/controller/controller';
import { main } from '../../../src/cli/main';
import { generateKeyAndCsr, NodeSession, readBootstrapToken, TOKEN_ENV } from '../../../src/node-proxy/identity';
import { ConfigStream } from '../../../src/node-proxy/state';
import { doc, tempDir } from '../../helpers/controller';
import { waitFor } from '../../helpers/wait';

t.test('the token comes from a file or the environment, never argv', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'token');
  fs.writeFileSync(file, 'abcd1234.0123\n', { mode: 0o600 });
  t.equal(readBootstrapToken(file, {}), 'abcd1234.0123', 'first line of the file');
  t.equal(readBootstrapToken(undefined, { [TOKEN_ENV]: ' ffff0000.99 ' }), 'ffff0000.99', 'or the environment');
  t.equal(readBootstrapToken(undefined, {}), undefined);
  fs.writeFileSync(path.join(dir, 'empty'), '\n');
  t.throws(() => readBootstrapToken(path.join(dir, 'empty'), {}), { code: 'NM_ERR_NO_TOKEN', message: /is empty/ });
  t.throws(() => readBootstrapToken(path.join(dir, 'missing'), {}), { code: 'NM_ERR_NO_TOKEN', message: /cannot read --token-file .*ENOENT/ });

  let err = '';
  const code = await main(['proxy', '--node', 'n1', '--controller', '127.0.0.1:1', '--proxy-ip', '198.18.0.1', '--token', 'abcd1234.0123'], { out: () => {}, err: (s) => void (err += s) });
  t.equal(code, 64, 'a usage error');
  t.match(err, /--token puts the bootstrap token in every `ps` listing: write it to a file \(mode 0600\) and pass --token-file FILE, or set \$NODEMESH_BOOTSTRAP_TOKEN/);
});

t.test('a renewed node certificate is the one the controller connection presents', async (t) => {
  const dataDir = tempDir(t);
  const controller = await startController({ dataDir, listen: '127.0.0.1:0', metricsListen: '127.0.0.1:0', nodeCertLifetimeSeconds: 6, heartbeatMs: 500 });
  t.teardown(() => controller.close());
  const admin = ControllerClient.fromCredentials(controller.credentialsPath);
  t.teardown(() => admin.close());
  await admin.apply([doc({ apiVersion: 'nodemesh.io/v1alpha1', kind: 'Workload', metadata: { name: 'web', namespace: 'shop' }, spec: { node: 'n1', serviceAccount: 'web', addresses: ['198.18.1.1'] } })]);
  const tokenFile = path.join(dataDir, 'token-n1');
  fs.writeFileSync(tokenFile, `${(await admin.createToken('n1')).token}\n`, { mode: 0o600 });
  const address = (JSON.parse(fs.readFileSync(controller.credentialsPath, 'utf8')) as { controller: string }).controller;

  let stream: ConfigStream | undefined;
  const session = await NodeSession.open({
    node: 'n1',
    controller: address,
    stateDir: path.join(dataDir, 'proxy-n1'),
    token: readBootstrapToken(tokenFile, {}),
    caFile: path.join(dataDir, 'ca', 'ca.crt'),
    onRenewed: (client) => stream?.setClient(client),
  });
  t.teardown(() => session.close());
  stream = new ConfigStream({ client: session.client, node: 'n1', backoffMs: 100 });
  stream.start();
  t.teardown(() => stream!.stop());
  const n1 = async () => (await admin.listNodes()).find((n) => n.node === 'n1');
  t.ok(await waitFor(async () => (await n1())?.connected === true, 5_000), 'the stream is up');
  const first = (await n1())!;
  t.equal(first.streamCertificateSerial, first.certificateSerial, 'it presents the certificate the join gave');
  const firstExpiry = first.certificateExpiresUnixMs;

  t.ok(await waitFor(() => session.renewals >= 1, 10_000), 'renewed at half life');
  t.ok(
    await waitFor(async () => {
      const n = await n1();
      return n !== undefined && n.connected && n.certificateSerial !== first.certificateSerial && n.streamCertificateSerial === n.certificateSerial;
    }, 5_000),
    'the open stream moved to the renewed certificate',
  );

  // Past the first certificate's end, everything still works on the renewed one.
  await new Promise((r) => setTimeout(r, Math.max(0, firstExpiry - Date.now()) + 1_000));
  const later = (await n1())!;
  t.ok(later.connected, 'the stream is connected after the first certificate expired');
  t.not(later.streamCertificateSerial, first.certificateSerial);
  const w = await session.client.sign((await generateKeyAndCsr(spiffeWorkloadId('cluster.local', 'shop', 'web'))).csrPem);
  t.match(w.certificateChainPem, /BEGIN CERTIFICATE/, 'calls on the session client are accepted');
  t.ok(stream.state.version > 0, 'the config arrived');
});
