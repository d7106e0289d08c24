/** A real controller for a test: temp data dir, loopback ports, captured logs; or a real controller process. */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { Writable } from 'node:stream';

import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import type { Test } from 'tap';

import { spiffeNodeId } from '../../src/controller/ca';
import { ClientError, ControllerClient, loadCredentials } from '../../src/controller/client';
import { startController, type ControllerOptions, type RunningController } from '../../src/controller/controller';
import { generateKeyAndCsr } from '../../src/node-proxy/identity';
import { PACKAGE_ROOT } from '../../src/paths';

export interface TestController {
  controller: RunningController;
  dataDir: string;
  address: string;
  admin: ControllerClient;
  /** Log lines (parsed JSON) the controller wrote. */
  logs: Record<string, unknown>[];
  /** Stops the controller (once; the teardown does it otherwise). */
  stop(): Promise<void>;
  /** A client holding node `node`'s certificate (joined with a fresh token). */
  nodeClient(node: string, opts?: { maxResponseBytes?: number }): Promise<ControllerClient>;
}

export function tempDir(t: Test, prefix = 'nodemesh-ctl-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export async function testController(t: Test, dataDir = tempDir(t), extra: Pick<ControllerOptions, 'limits'> = {}): Promise<TestController> {
  const logs: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n')) if (line) logs.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });
  const controller = await startController({ dataDir, listen: '127.0.0.1:0', metricsListen: '127.0.0.1:0', log: pino({ level: 'debug' }, sink), heartbeatMs: 1000, ...extra });
  const creds = loadCredentials(controller.credentialsPath);
  const admin = ControllerClient.fromCredentials(controller.credentialsPath);
  const clients: ControllerClient[] = [admin];
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => (stopped ??= controller.close());
  t.teardown(async () => {
    for (const c of clients) c.close();
    await stop();
  });
  return {
    controller,
    dataDir,
    address: creds.controller,
    admin,
    logs,
    stop,
    async nodeClient(node: string, opts: { maxResponseBytes?: number } = {}): Promise<ControllerClient> {
      const { token } = await admin.createToken(node);
      const anon = new ControllerClient({ address: creds.controller, ca: creds.ca });
      clients.push(anon);
      const { keyPem, csrPem } = await generateKeyAndCsr(spiffeNodeId('cluster.local', node));
      const cert = await anon.join(token, node, csrPem);
      const c = new ControllerClient({ address: creds.controller, ca: cert.trustBundlePem, cert: cert.certificateChainPem, key: keyPem }, opts);
      clients.push(c);
      return c;
    },
  };
}

/**
 * `nodemesh controller` as its own process on loopback ports, resolved once it
 * serves; the caller kills it (a kill -9 is what these tests are about).
 */
export function controllerProcess(dataDir: string): Promise<ChildProcess> {
  const bin = path.join(PACKAGE_ROOT, 'bin', 'nodemesh.js');
  const child = spawn(process.execPath, [bin, 'controller', '--data-dir', dataDir, '--listen', '127.0.0.1:0', '--metrics-listen', '127.0.0.1:0', '--log-level', 'warn'], { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('controller serving')) resolve(child);
    });
    child.once('exit', (code) => reject(new Error(`controller exited (${code}) before serving: ${out}`)));
  });
}

/**
 * The error a call was refused with. A call that was served fails the test,
 * or with `orServed` comes back as a ClientError with code 'SERVED', so each
 * case of a table reports on its own.
 */
export async function refused(p: Promise<unknown>, opts: { orServed?: boolean } = {}): Promise<ClientError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof ClientError) return err;
    throw err;
  }
  if (opts.orServed) return new ClientError('SERVED', 'the call was served', grpc.status.OK, false);
  throw new Error('expected the call to be refused');
}

/** A resource document as the API takes it. */
export function doc(value: unknown, index = 1, source = 'test.yaml'): { source: string; index: number; json: string } {
  return { source, index, json: JSON.stringify(value) };
}

/** GET a path on a controller's 15014 (new connection each time, as a scraper does). */
export function httpGet(port: number, path: string, timeoutMs = 5000): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent: false, timeout: timeoutMs }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${path} timed out`)));
    req.on('error', reject);
  });
}

/** The value of one sample in Prometheus text (0 when absent): `name{a="x",b="y"}`, labels in any order. */
export function sample(text: string, name: string, labels: Record<string, string> = {}): number {
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(m[3]);
  }
  return 0;
}
