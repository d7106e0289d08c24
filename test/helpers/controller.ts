/** A real controller for a test: temp data dir, loopback ports, captured logs. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Writable } from 'node:stream';

import pino from 'pino';
import type { Test } from 'tap';

import { spiffeNodeId } from '../../src/controller/ca';
import { ControllerClient, loadCredentials } from '../../src/controller/client';
import { startController, type RunningController } from '../../src/controller/controller';
import { generateKeyAndCsr } from '../../src/node-proxy/identity';

export interface TestController {
  controller: RunningController;
  dataDir: string;
  address: string;
  admin: ControllerClient;
  /** Log lines (parsed JSON) the controller wrote. */
  logs: Record<string, unknown>[];
  /** A client holding node `node`'s certificate (joined with a fresh token). */
  nodeClient(node: string): Promise<ControllerClient>;
}

export function tempDir(t: Test, prefix = 'nodemesh-ctl-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export async function testController(t: Test, dataDir = tempDir(t)): Promise<TestController> {
  const logs: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n')) if (line) logs.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });
  const controller = await startController({ dataDir, listen: '127.0.0.1:0', metricsListen: '127.0.0.1:0', log: pino({ level: 'debug' }, sink), heartbeatMs: 1000 });
  const creds = loadCredentials(controller.credentialsPath);
  const admin = ControllerClient.fromCredentials(controller.credentialsPath);
  const clients: ControllerClient[] = [admin];
  t.teardown(async () => {
    for (const c of clients) c.close();
    await controller.close();
  });
  return {
    controller,
    dataDir,
    address: creds.controller,
    admin,
    logs,
    async nodeClient(node: string): Promise<ControllerClient> {
      const { token } = await admin.createToken(node);
      const anon = new ControllerClient({ address: creds.controller, ca: creds.ca });
      clients.push(anon);
      const { keyPem, csrPem } = await generateKeyAndCsr(spiffeNodeId('cluster.local', node));
      const cert = await anon.join(token, node, csrPem);
      const c = new ControllerClient({ address: creds.controller, ca: cert.trustBundlePem, cert: cert.certificateChainPem, key: keyPem });
      clients.push(c);
      return c;
    },
  };
}

/** A resource document as the API takes it. */
export function doc(value: unknown, index = 1, source = 'test.yaml'): { source: string; index: number; json: string } {
  return { source, index, json: JSON.stringify(value) };
}
