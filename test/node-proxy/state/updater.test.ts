/**
 * The state updater, with a data path this test controls (pure: no root):
 * a version is checked and its policies compiled once, taken with the
 * lookups in one tick, and enrollment ends as the last version says however
 * versions and slow enrolls interleave.
 */
import { t } from 'tap';

import type { ConfigMessage, Item } from '../../../src/api/proto';
import { ConfigState, StateUpdater, type EnrollmentOps } from '../../../src/node-proxy/state';

const pod = (name: string, netns = `/run/netns/${name}`): Item => ({
  key: `Workload/shop/${name}`,
  workload: { node: 'n1', serviceAccount: name, addresses: [`198.18.1.${name.length}`], labels: { app: name }, ready: true, netns, resourceVersion: '' },
});
const policy = (name: string, to: unknown): Item => ({
  key: `AuthorizationPolicy/shop/${name}`,
  json: JSON.stringify({ kind: 'AuthorizationPolicy', metadata: { name, namespace: 'shop' }, spec: { action: 'DENY', rules: [{ to }] } }),
});

/** A data path whose enrolls finish only when the test says. */
function slowDatapath(): EnrollmentOps & { enrolled: Map<bigint, string>; pending: (() => void)[]; calls: string[] } {
  let next = 100n;
  const d = {
    enrolled: new Map<bigint, string>(),
    pending: [] as (() => void)[],
    calls: [] as string[],
    enroll(netns: string): Promise<bigint> {
      d.calls.push(`enroll ${netns}`);
      const cookie = next++;
      return new Promise((resolve) =>
        d.pending.push(() => {
          d.enrolled.set(cookie, netns);
          resolve(cookie);
        }),
      );
    },
    update() {},
    unenroll(cookie: bigint) {
      d.calls.push(`unenroll ${d.enrolled.get(cookie)}`);
      d.enrolled.delete(cookie);
    },
  };
  return d;
}

function setup(): { state: ConfigState; updater: StateUpdater; datapath: ReturnType<typeof slowDatapath>; take(d: Omit<NonNullable<ConfigMessage['delta']>, 'version' | 'fromVersion'>): string | null } {
  const state = new ConfigState();
  const datapath = slowDatapath();
  const updater = new StateUpdater({ node: 'n1', state, enrollment: datapath, exists: () => true });
  return {
    state,
    updater,
    datapath,
    take(d) {
      const staged = state.prepare({ delta: { version: state.version + 1, fromVersion: state.version, ...d } })!;
      const problem = updater.validate(staged);
      if (problem) return problem;
      updater.commit(state.commit(staged));
      return null;
    },
  };
}

const settle = async (d: ReturnType<typeof slowDatapath>, updater: StateUpdater): Promise<void> => {
  for (let i = 0; i < 50; i++) {
    while (d.pending.length) d.pending.shift()!();
    await new Promise((r) => setImmediate(r));
  }
  await updater.reconcile();
  while (d.pending.length) d.pending.shift()!();
  await new Promise((r) => setImmediate(r));
};

t.test('a burst that adds and removes a workload while its enroll is in flight ends as the last version says', async (t) => {
  const { updater, datapath, take } = setup();
  take({ upserts: [pod('a')], removals: [] });
  t.same(datapath.calls, ['enroll /run/netns/a'], 'its enroll started');
  // Removed, added, removed again before the first enroll finished.
  take({ upserts: [], removals: ['Workload/shop/a'] });
  take({ upserts: [pod('a')], removals: [] });
  take({ upserts: [], removals: ['Workload/shop/a'] });
  await settle(datapath, updater);
  t.same([...datapath.enrolled.values()], [], 'not enrolled: the last version removed it');
  t.same(updater.enrolled(), []);

  // And a burst that ends with it present: enrolled once, no enrollment leaked.
  take({ upserts: [pod('b')], removals: [] });
  take({ upserts: [], removals: ['Workload/shop/b'] });
  take({ upserts: [pod('b')], removals: [] });
  await settle(datapath, updater);
  t.same([...datapath.enrolled.values()], ['/run/netns/b'], 'enrolled once');
  t.same(updater.enrolled().map(([, w]) => w.name), ['b']);
  // A workload that moves to another netns is enrolled from the new one.
  take({ upserts: [pod('b', '/run/netns/b2')], removals: [] });
  await settle(datapath, updater);
  t.same([...datapath.enrolled.values()], ['/run/netns/b2']);
});

t.test('policies compile once, while staged; a version whose policies do not compile is refused whole', async (t) => {
  const { state, updater, take } = setup();
  t.equal(take({ upserts: [policy('p', [{ operation: { ports: ['80'] } }])], removals: [] }), null);
  const compiled = updater.policies;
  t.equal(take({ upserts: [pod('c')], removals: [] }), null);
  t.equal(updater.policies, compiled, 'a version without policies keeps the compiled set');
  const held = state.version;
  // What the controller's validation would not let through; a proxy must not take it either.
  const problem = take({ upserts: [policy('q', 5)], removals: [] });
  t.match(problem, /^authorization policies: /, 'refused, naming why');
  t.equal(state.version, held, 'nothing taken');
  t.equal(updater.policies, compiled);
  t.equal(take({ upserts: [], removals: ['AuthorizationPolicy/shop/p'] }), null);
  t.not(updater.policies, compiled, 'removing a policy recompiles');
});

t.test('a local workload whose netns is missing refuses the version', async (t) => {
  const state = new ConfigState();
  const updater = new StateUpdater({ node: 'n1', state, exists: (p) => p !== '/run/netns/gone' });
  const staged = state.prepare({ snapshot: { version: 1, items: [pod('d', '/run/netns/gone')] } })!;
  t.equal(updater.validate(staged), 'Workload/shop/d: its netns /run/netns/gone does not exist on node n1');
});
