/**
 * kill -9 at any moment loses no acknowledged write and leaves no half batch:
 * a real controller process takes batches over gRPC until it is killed, then
 * a new one opens the same data dir.
 */
import * as path from 'node:path';

import { t } from 'tap';

import { ControllerClient } from '../../src/controller/client';
import { controllerProcess, doc, tempDir } from '../helpers/controller';

const BATCH = 5;

const workload = (batch: number, j: number) => ({
  apiVersion: 'nodemesh.io/v1alpha1',
  kind: 'Workload',
  metadata: { name: `b${batch}-${j}`, namespace: 'crash', labels: { batch: String(batch) } },
  spec: { node: 'n1', serviceAccount: 'default', addresses: [`198.18.${(batch % 200) + 1}.${j + 1}`] },
});

t.test('kill -9 while applying', async (t) => {
  const dataDir = tempDir(t, 'nodemesh-crash-');
  let child = await controllerProcess(dataDir);
  t.teardown(() => child.kill('SIGKILL'));
  const creds = path.join(dataDir, 'admin.json');
  let client = ControllerClient.fromCredentials(creds, { timeoutMs: 5000 });
  const acked: number[] = [];
  let stop = false;
  const loop = (async () => {
    for (let batch = 0; !stop; batch++) {
      try {
        await client.apply(Array.from({ length: BATCH }, (_, j) => doc(workload(batch, j), j + 1)));
        acked.push(batch);
      } catch {
        return; // the controller died under this call: not acknowledged
      }
    }
  })();
  await new Promise((r) => setTimeout(r, 1500));
  child.kill('SIGKILL');
  stop = true;
  await loop;
  client.close();
  t.ok(acked.length > 5, `${acked.length} batches were acknowledged before the kill`);

  child = await controllerProcess(dataDir);
  client = ControllerClient.fromCredentials(creds, { timeoutMs: 5000 });
  t.teardown(() => client.close());
  // A client retries while a restarted controller comes up.
  let listed: Awaited<ReturnType<ControllerClient['list']>> | undefined;
  for (let i = 0; !listed; i++) {
    listed = await client.list('workloads', { namespace: 'crash' }).catch((err: unknown) => {
      if (i >= 20) throw err;
      return new Promise<undefined>((r) => setTimeout(() => r(undefined), 100));
    });
  }
  const { items } = listed;
  const byBatch = new Map<string, number>();
  for (const w of items) byBatch.set(w.metadata.labels!.batch!, (byBatch.get(w.metadata.labels!.batch!) ?? 0) + 1);
  t.ok(acked.every((b) => byBatch.get(String(b)) === BATCH), 'every acknowledged batch is there, whole');
  t.ok([...byBatch.values()].every((n) => n === BATCH), 'no batch is there in part');
  t.ok(byBatch.size <= acked.length + 1, 'at most the one in flight was written without its acknowledgement');
  const r = await client.apply([doc(workload(999999, 0))]);
  t.ok(r.version > acked.length, 'versions continue after the restart');
  child.kill('SIGKILL');
});
