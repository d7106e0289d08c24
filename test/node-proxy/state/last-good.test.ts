/**
 * The last-good config in the state dir (no root): written in the stream's
 * own form and read back through the same checks, exactly; replaced
 * atomically; a burst of versions written once; a damaged file, or one of
 * another node, refused with an error naming it and nothing applied.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';

import { t } from 'tap';

import type { Item } from '../../../src/api/proto';
import { applyLastGood, ConfigState, encodeLastGood, LastGoodError, LastGoodStore, StateUpdater } from '../../../src/node-proxy/state';
import { tempDir } from '../../helpers/controller';

const workload = (i: number, node = `n${i % 100}`): Item => ({
  key: `Workload/ns${i % 50}/w-${i}`,
  workload: {
    node,
    serviceAccount: `sa-${i % 500}`,
    addresses: [`198.18.${(i >> 8) & 255}.${i & 255}`, `2001:2::${i.toString(16)}`],
    labels: { app: `app-${i % 1000}`, version: i % 3 ? 'v1' : 'v2', 'pod-template-hash': `h${i % 7919}` },
    ready: i % 17 !== 0,
    netns: node === 'n1' ? `/run/netns/pod-${i}` : '',
    resourceVersion: String(1000 + i),
  },
});
const service = (i: number): Item => ({
  key: `Service/ns${i % 50}/svc-${i}`,
  service: {
    json: JSON.stringify({ apiVersion: 'nodemesh.io/v1alpha1', kind: 'Service', metadata: { name: `svc-${i}`, namespace: `ns${i % 50}` }, spec: { selector: { app: `app-${i}` }, addresses: [`198.19.${i >> 8}.${i & 255}`], ports: [{ port: 80, targetPort: 8080 }] } }),
    endpoints: Array.from({ length: 10 }, (_, j) => `w-${i * 10 + j}`),
  },
});
const deny = (port: string): Item => ({
  key: 'AuthorizationPolicy/ns1/deny-port',
  json: JSON.stringify({ apiVersion: 'nodemesh.io/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'deny-port', namespace: 'ns1' }, spec: { action: 'DENY', rules: [{ to: [{ operation: { ports: [port] } }] }] } }),
});

/** A node's state at `version` holding `items`, taken as the stream takes a snapshot. */
function stateOf(version: number, items: Item[]): ConfigState {
  const state = new ConfigState();
  state.apply({ snapshot: { version, items, totalItems: items.length } });
  return state;
}

function updaterOf(state: ConfigState, node = 'n1', exists: (p: string) => boolean = () => true): StateUpdater {
  return new StateUpdater({ node, state, exists });
}

const realistic = (n: number): Item[] => [...Array.from({ length: n }, (_, i) => workload(i)), ...Array.from({ length: n / 50 }, (_, i) => service(i)), deny('7004')];

t.test('50,000 workloads: saved, then read back through prepare, validate and commit to the same state', async (t) => {
  const dir = tempDir(t);
  const saved = stateOf(41, realistic(50_000));
  const store = new LastGoodStore({ dir, node: 'n1', saveDelayMs: 0 });
  const lag = monitorEventLoopDelay({ resolution: 5 });
  lag.enable();
  store.save(saved);
  await store.flush();
  lag.disable();
  const st = fs.statSync(store.file);
  t.equal(st.mode & 0o777, 0o600, 'the file is mode 0600');
  t.ok(st.size < 8 * 1024 * 1024, `${(st.size / 1048576).toFixed(2)} MiB for ${saved.items.size} items`);
  t.comment(`write at 50,000 workloads: ${Math.round(store.lastWriteMs)} ms end to end, ${(st.size / 1048576).toFixed(2)} MiB, longest event-loop stall ${(lag.max / 1e6).toFixed(1)} ms`);
  t.ok(lag.max / 1e6 < 1_000, `the event loop was never held for long (longest ${(lag.max / 1e6).toFixed(1)} ms)`);
  t.match(store.saved, { version: 41, node: 'n1', items: saved.items.size, bytes: st.size });

  const reader = new LastGoodStore({ dir, node: 'n1' });
  const started = performance.now();
  const loaded = await reader.load();
  const state = new ConfigState();
  const updater = updaterOf(state);
  const r = applyLastGood(loaded!, state, updater);
  t.comment(`read and applied in ${Math.round(performance.now() - started)} ms`);
  t.equal(r?.version, 41);
  t.equal(state.version, 41, 'the version it was saved at');
  t.equal(state.items.size, saved.items.size);
  t.equal(JSON.stringify([...state.items]), JSON.stringify([...saved.items]), 'every item exactly as it was');
  t.equal(updater.view.localWorkloads.length, 500, "this node's workloads are local again");
  t.equal(updater.policies.evaluate({ source: { ip: '198.18.0.1' }, destination: { namespace: 'ns1', labels: {}, ip: '198.18.0.2', port: 7004 } } as never).allowed, false, 'its DENY is in force');
});

t.test('a burst of versions is written once, as its last version; the file is replaced whole', async (t) => {
  const dir = tempDir(t);
  const store = new LastGoodStore({ dir, node: 'n1', saveDelayMs: 200 });
  const state = new ConfigState();
  const base = Array.from({ length: 2_000 }, (_, i) => workload(i));
  state.apply({ snapshot: { version: 1, items: base, totalItems: base.length } });
  store.save(state);
  await store.flush();
  const firstMtime = fs.statSync(store.file).mtimeMs;
  let writes = 0;
  const watcher = fs.watch(dir, (_e, f) => {
    if (f === 'config.bin') writes++;
  });
  t.teardown(() => watcher.close());
  // Readers during the burst only ever see a whole file, the old one or a new one.
  let reads = 0;
  let reading = true;
  const reader = (async () => {
    while (reading) {
      const got = await new LastGoodStore({ dir, node: 'n1' }).load();
      t.ok(got && got.items >= 2_000, 'a whole file');
      reads++;
      await new Promise((r) => setTimeout(r, 5));
    }
  })();
  for (let v = 2; v <= 500; v++) {
    state.apply({ delta: { version: v, fromVersion: v - 1, upserts: [workload(10_000 + v)], removals: [] } });
    store.save(state);
    if (v % 50 === 0) await new Promise((r) => setTimeout(r, 20));
  }
  await store.flush();
  reading = false;
  await reader;
  const got = await new LastGoodStore({ dir, node: 'n1' }).load();
  t.equal(got?.version, 500, 'the file holds the last version');
  t.equal(got?.items, 2_000 + 499);
  t.ok(fs.statSync(store.file).mtimeMs >= firstMtime);
  t.ok(writes < 40, `499 versions, ${writes} file events (a rename is one or two)`);
  t.ok(reads > 0, `${reads} reads during the burst, all whole`);
  t.same(fs.readdirSync(dir).filter((f) => f !== 'config.bin'), [], 'no temporary file is left');
});

t.test('a damaged file is refused, naming the file and the fix; nothing is applied', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'config.bin');
  const good = await encodeLastGood('n1', 7, [...stateOf(7, realistic(1_000)).items]);
  const cases: [string, Buffer][] = [
    ['empty', Buffer.alloc(0)],
    ['not ours', Buffer.from('{"hello":"world"}\n')],
    ['cut off', good.subarray(0, Math.floor(good.length / 2))],
    ['a flipped byte in the body', Buffer.from(good.map((b, i) => (i === good.length - 100 ? b ^ 0xff : b)))],
    ['a header that lies about the size', Buffer.from(good.toString('latin1').replace(/"bodyBytes":\d+/, '"bodyBytes":12'), 'latin1')],
    ['a header that is not JSON', Buffer.from(good.toString('latin1').replace('{"node"', '{node'), 'latin1')],
  ];
  for (const [name, bytes] of cases) {
    fs.writeFileSync(file, bytes, { mode: 0o600 });
    const state = new ConfigState();
    let err: unknown;
    try {
      const loaded = await new LastGoodStore({ dir, node: 'n1' }).load();
      applyLastGood(loaded!, state, updaterOf(state));
    } catch (e) {
      err = e;
    }
    t.ok(err instanceof LastGoodError, `${name}: refused`);
    t.match((err as Error).message, new RegExp(`^the last config in ${file.replace(/[/.]/g, '\\$&')} is not used: .*waits for the controller.*remove the file`), `${name}: ${(err as Error).message}`);
    t.equal(state.version, 0, `${name}: nothing applied`);
    t.equal(state.items.size, 0);
  }
  fs.chmodSync(file, 0);
  if (process.getuid?.() !== 0) await t.rejects(new LastGoodStore({ dir, node: 'n1' }).load(), { code: 'NM_ERR_LAST_GOOD', message: /cannot be read \(EACCES\)/ }, 'an unreadable file is refused');
  fs.rmSync(file);
  t.equal(await new LastGoodStore({ dir, node: 'n1' }).load(), undefined, 'no file: nothing to serve, no error');
});

t.test('a version this proxy cannot run is refused whole, as from the controller', async (t) => {
  const dir = tempDir(t);
  fs.writeFileSync(path.join(dir, 'config.bin'), await encodeLastGood('n1', 9, [...stateOf(9, realistic(1_000)).items]));
  const loaded = await new LastGoodStore({ dir, node: 'n1' }).load();
  const state = new ConfigState();
  const updater = updaterOf(state, 'n1');
  // Kept by a proxy that held more than this one may (--max-config-items lowered since).
  t.throws(() => applyLastGood(loaded!, state, updater, 500), { code: 'NM_ERR_LAST_GOOD', message: /version 9 is refused: / });
  t.equal(state.version, 0, 'nothing applied');
  t.equal(updater.view.workloads.size, 0, 'the lookups are untouched');
  t.equal(applyLastGood(loaded!, stateOf(3, []), updaterOf(stateOf(3, []))), undefined, 'a state that already holds a version (the controller answered) is not replaced');
});

t.test('a kept workload whose netns is gone is taken without being enrolled; from the controller it is refused', async (t) => {
  const dir = tempDir(t);
  fs.writeFileSync(path.join(dir, 'config.bin'), await encodeLastGood('n1', 9, [...stateOf(9, realistic(1_000)).items]));
  const loaded = await new LastGoodStore({ dir, node: 'n1' }).load();
  const state = new ConfigState();
  const updater = updaterOf(state, 'n1', (p) => !p.endsWith('/pod-1'));
  const r = applyLastGood(loaded!, state, updater);
  t.ok(r, 'applied');
  t.equal(state.version, 9, 'the kept version is served');
  t.ok(updater.view.workloads.size > 0 && updater.policies, 'with its workloads and policies');
  const fromController = new ConfigState();
  const refusing = updaterOf(fromController, 'n1', (p) => !p.endsWith('/pod-1'));
  const staged = fromController.prepare(loaded!.message)!;
  t.match(refusing.validate(staged), /^Workload\/ns1\/w-1: its netns \/run\/netns\/pod-1 does not exist on node n1$/, 'the same version from the controller is refused, naming the workload');
});

t.test("another node's file is refused", async (t) => {
  const dir = tempDir(t);
  fs.writeFileSync(path.join(dir, 'config.bin'), await encodeLastGood('n2', 5, [...stateOf(5, realistic(1_000)).items]));
  await t.rejects(new LastGoodStore({ dir, node: 'n1' }).load(), { code: 'NM_ERR_LAST_GOOD', message: /holds the config of node "n2", not of "n1".*own --state-dir/ });
  t.equal((await new LastGoodStore({ dir, node: 'n2' }).load())?.version, 5, 'its own node reads it');
});
