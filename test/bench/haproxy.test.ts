/**
 * The L4 benchmark's fair peer (bench/haproxy.ts) does the work it stands in
 * for: the originating HAProxy speaks TLS 1.3 with a client certificate to the
 * terminating one, which refuses a client without one and forwards plaintext.
 * Real HAProxy and openssl on loopback; skipped where HAProxy is not installed.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tls from 'node:tls';

import { t } from 'tap';

import { makeCerts, originateConfig, plainConfig, terminateConfig, type Forward } from '../../bench/haproxy';
import { waitFor } from '../helpers/wait';

const haproxy = spawnSync('sh', ['-c', 'command -v haproxy']).status === 0;

async function freePort(): Promise<number> {
  const s = net.createServer().listen(0, '127.0.0.1');
  await new Promise((r) => s.once('listening', r));
  const { port } = s.address() as net.AddressInfo;
  await new Promise((r) => s.close(r));
  return port;
}

function echo(data: Buffer, port: number, connect: (port: number) => net.Socket): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(port);
    let got = Buffer.alloc(0);
    const timer = setTimeout(() => (s.destroy(), reject(new Error('no echo within 5 s'))), 5000);
    s.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d]);
      if (got.length >= data.length) {
        clearTimeout(timer);
        s.destroy();
        resolve(got.toString());
      }
    });
    s.on('error', (err) => (clearTimeout(timer), reject(err)));
    s.write(data);
  });
}

t.test('the throwaway CA signs both certificates', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-bench-test-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const certs = makeCerts(dir);
  for (const pem of [certs.server, certs.client]) t.match(execFileSync('openssl', ['verify', '-CAfile', certs.ca, pem], { encoding: 'utf8' }), /: OK/, `${path.basename(pem)} chains to the CA`);
  t.match(execFileSync('openssl', ['x509', '-in', certs.client, '-noout', '-text'], { encoding: 'utf8' }), /TLS Web Client Authentication/, 'the client certificate is for client authentication');
});

t.test('the HAProxy pair: TLS 1.3 with a client certificate between them, plaintext at both ends', { skip: haproxy ? false : 'haproxy is not installed (apt-get install haproxy)' }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-bench-test-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const certs = makeCerts(dir);
  const server = net.createServer((s) => s.pipe(s)).listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  t.teardown(() => server.close());
  const backend = (server.address() as net.AddressInfo).port;
  const [plainIn, tlsIn, hopIn] = [await freePort(), await freePort(), await freePort()];
  const fw = (port: number, toPort: number): Forward[] => [{ name: 'x', bind: '127.0.0.1', port, to: '127.0.0.1', toPort }];
  const configs = { originate: originateConfig(fw(plainIn, tlsIn), certs), terminate: terminateConfig(fw(tlsIn, backend), certs), hop: plainConfig(fw(hopIn, backend)) };
  for (const [name, cfg] of Object.entries(configs)) {
    const file = path.join(dir, `${name}.cfg`);
    fs.writeFileSync(file, cfg);
    t.equal(spawnSync('haproxy', ['-c', '-q', '-f', file]).status, 0, `haproxy accepts the ${name} config`);
    t.match(cfg, /nbthread 1\n/, `${name}: one thread`);
    const child = spawn('haproxy', ['-db', '-f', file], { stdio: 'ignore' });
    t.teardown(() => void child.kill('SIGKILL'));
  }
  const plain = (port: number): net.Socket => net.connect(port, '127.0.0.1');
  const up = await waitFor(async () => (await echo(Buffer.from('ping'), plainIn, plain).catch(() => '')) === 'ping', 10_000);
  t.ok(up, 'plaintext in at the originating side comes back from the server through the terminating side');
  t.ok(await waitFor(async () => (await echo(Buffer.from('hop'), hopIn, plain).catch(() => '')) === 'hop', 10_000), 'the one hop forwards plaintext');

  const withCert = await new Promise<{ protocol: string | null; authorized: boolean }>((resolve, reject) => {
    const s = tls.connect({ port: tlsIn, host: '127.0.0.1', ca: fs.readFileSync(certs.ca), cert: fs.readFileSync(certs.client), key: fs.readFileSync(certs.client), servername: 'haproxy-terminate.bench.invalid' }, () => {
      resolve({ protocol: s.getProtocol(), authorized: s.authorized });
      s.destroy();
    });
    s.on('error', reject);
  });
  t.same(withCert, { protocol: 'TLSv1.3', authorized: true }, 'the terminating side speaks TLS 1.3 with a certificate from the CA for its name');

  const noCert = await new Promise<string>((done) => {
    const timer = setTimeout(() => (s.destroy(), resolve('timeout')), 5000);
    const resolve = (why: string): void => (clearTimeout(timer), done(why));
    const s = tls.connect({ port: tlsIn, host: '127.0.0.1', ca: fs.readFileSync(certs.ca), servername: 'haproxy-terminate.bench.invalid' });
    s.on('secureConnect', () => s.write('x'));
    s.on('data', () => resolve('answered'));
    s.on('error', (err) => resolve(`error: ${err.message}`));
    s.on('close', () => resolve('closed'));
  });
  t.not(noCert, 'answered', `a client without a certificate gets nothing through (${noCert})`);
  t.not(noCert, 'timeout', 'and is refused, not left hanging');
});
