/** The embedded store: versions, all-or-nothing batches, preconditions, the change log, persistence. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { t, type Test } from 'tap';

import type { Resource } from '../../../src/api/kinds';
import { ConflictError, NotFoundError, SqliteStore } from '../../../src/controller/store';

function tmp(t: Test): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-store-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function wl(name: string, labels: Record<string, string> = {}, extra: Partial<Resource['metadata']> = {}): Resource {
  return {
    apiVersion: 'nodemesh.io/v1alpha1',
    kind: 'Workload',
    metadata: { name, namespace: 'default', labels, ...extra },
    spec: { node: 'n1', serviceAccount: 'default', addresses: ['198.18.1.1'], ready: true },
  };
}

t.test('apply: created, configured, unchanged; versions and generations', async (t) => {
  const s = new SqliteStore(tmp(t));
  t.teardown(() => s.close());
  t.equal(s.version, 0);
  let out = s.apply([wl('a'), wl('b')]);
  t.same(out.map((o) => o.action), ['created', 'created']);
  t.equal(s.version, 1);
  t.equal(out[0]!.resource.metadata.resourceVersion, '1');
  t.equal(out[0]!.resource.metadata.generation, 1);
  t.match(out[0]!.resource.metadata.uid, /^[0-9a-f-]{36}$/);
  const uid = out[0]!.resource.metadata.uid;

  out = s.apply([wl('a'), wl('b', { app: 'x' })]);
  t.same(out.map((o) => o.action), ['unchanged', 'configured']);
  t.equal(s.version, 2);
  t.equal(out[0]!.resource.metadata.resourceVersion, '1', 'unchanged keeps its version');
  t.equal(out[1]!.resource.metadata.generation, 1, 'a label change does not bump generation');
  out = s.apply([{ ...wl('a'), spec: { node: 'n2', serviceAccount: 'default', addresses: ['198.18.1.1'], ready: true } }]);
  t.equal(out[0]!.resource.metadata.generation, 2, 'a spec change does');
  t.equal(out[0]!.resource.metadata.uid, uid, 'uid is kept');
  t.equal(s.apply([wl('b', { app: 'x' })])[0]!.action, 'unchanged');
  t.equal(s.version, 3, 'a batch of unchanged objects is not a write');
});

t.test('a batch is all or nothing', async (t) => {
  const s = new SqliteStore(tmp(t));
  t.teardown(() => s.close());
  s.apply([wl('a')]);
  // b is new; a carries a stale resourceVersion: nothing of the batch is written.
  t.throws(() => s.apply([wl('b'), wl('a', { x: 'y' }, { resourceVersion: '99' })]), ConflictError);
  t.equal(s.get('Workload', 'default', 'b'), undefined, 'b was not written');
  t.same(s.get('Workload', 'default', 'a')?.metadata.labels, {}, 'a is unchanged');
  t.equal(s.version, 1);
  const ok = s.apply([wl('a', { x: 'y' }, { resourceVersion: '1' })]);
  t.equal(ok[0]!.action, 'configured', 'the right resourceVersion passes');
  t.throws(() => s.apply([wl('c', {}, { resourceVersion: '3' })]), /does not exist, not 3/);

  t.throws(() => s.delete([{ kind: 'Workload', namespace: 'default', name: 'a' }, { kind: 'Workload', namespace: 'default', name: 'nope' }]), NotFoundError);
  t.ok(s.get('Workload', 'default', 'a'), 'a delete batch with a missing target deletes nothing');
  t.throws(() => s.delete([{ kind: 'Workload', namespace: 'default', name: 'a', resourceVersion: '1' }]), ConflictError);
  t.equal(s.delete([{ kind: 'Workload', namespace: 'default', name: 'a' }]).length, 1);
  t.equal(s.get('Workload', 'default', 'a'), undefined);
});

t.test('change log: since a version, subscribers, compaction', async (t) => {
  const s = new SqliteStore(tmp(t), { eventRetention: 5 });
  t.teardown(() => s.close());
  const seen: string[] = [];
  const off = s.subscribe((changes, v) => seen.push(...changes.map((c) => `${v}:${c.type}:${c.resource.metadata.name}`)));
  s.apply([wl('a'), wl('b')]);
  s.apply([wl('a', { l: '1' })]);
  s.delete([{ kind: 'Workload', namespace: 'default', name: 'b' }]);
  t.same(seen, ['1:ADDED:a', '1:ADDED:b', '2:MODIFIED:a', '3:DELETED:b']);
  t.same(
    (s.changesSince(1) as { type: string; version: number }[]).map((c) => `${c.version}:${c.type}`),
    ['2:MODIFIED', '3:DELETED'],
  );
  t.same(s.changesSince(3), []);
  off();
  for (let i = 0; i < 10; i++) s.apply([wl('a', { l: String(i + 10) })]);
  t.equal(seen.length, 4, 'unsubscribed');
  t.equal(s.changesSince(1), 'compacted', 'old history is dropped; watchers must list again');
  t.equal((s.changesSince(s.version - 2) as unknown[]).length, 2);
});

t.test('state survives a reopen', async (t) => {
  const dir = tmp(t);
  const s = new SqliteStore(dir);
  s.apply([wl('a'), wl('b')]);
  s.putToken({ id: 'abc', node: 'n1', secretHash: 'ff', expiresAt: Date.now() + 1000, createdAt: Date.now(), uses: 1, used: 0 });
  s.close();
  const r = new SqliteStore(dir);
  t.teardown(() => r.close());
  t.equal(r.version, 1);
  t.same(r.list({ kind: 'Workload' }).map((x) => x.metadata.name), ['a', 'b']);
  t.equal(r.getToken('abc')?.node, 'n1');
  t.equal(r.deleteExpiredTokens(Date.now() + 5000), 1);
});
