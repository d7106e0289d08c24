/**
 * The one place that turns a config version into what the proxy runs on.
 * A version is checked and its policies compiled once, while it is still
 * staged (a version whose policies do not compile is refused whole); when
 * it is taken, the lookups and the compiled policies change in the same tick
 * as the state. What takes I/O — enrolling pods in the data path, workload
 * certificates — follows in one loop, latest wins: a version that arrives
 * while an enroll is in flight is reconciled after it, so the enrollment
 * always ends as the last version says (two overlapping passes could leave
 * a removed workload enrolled).
 */
import * as fs from 'node:fs';

import { POD_FAIL_OPEN, POD_STRICT } from '../../bpf/abi';
import { silentLogger, type Logger } from '../../log';
import { compilePolicies, type CompiledPolicySet } from '../policy';
import type { ApplyResult, ConfigState, Staged } from './config-state';
import { MeshView, type WorkloadView } from './mesh-view';

/** What the updater asks of the data path. */
export interface EnrollmentOps {
  /** Enrolls the pod netns at `netns`; its netns cookie. */
  enroll(netns: string, pod: { index: number; flags: number }): Promise<bigint>;
  /** Updates an enrolled pod's index and flags. */
  update(cookie: bigint, pod: { index: number; flags: number }): void;
  /** Unenrolls the pod enrolled from `netns` as `cookie`. */
  unenroll(cookie: bigint, netns: string): void;
}

/** What the updater asks of the workload certificates. */
export interface CertificateOps {
  want(identity: string): void;
  drop(identity: string): void;
  wanted(): string[];
}

export interface StateUpdaterOptions {
  node: string;
  state: ConfigState;
  enrollment?: EnrollmentOps;
  certificates?: CertificateOps;
  /** The data path flags of a local workload (PeerAuthentication STRICT). */
  podFlags?: (view: MeshView, w: WorkloadView) => number;
  /** Runs in the tick a version is taken, after the lookups changed (balancers, revocation checks, metrics). */
  onCommit?: (view: MeshView) => void;
  /** Whether a netns path exists (tests give their own). */
  exists?: (path: string) => boolean;
  log?: Logger;
}

export class StateUpdater {
  readonly view: MeshView;
  readonly #o: StateUpdaterOptions;
  readonly #log: Logger;
  #policies: CompiledPolicySet;
  /** Policies compiled for a staged version, taken with it. */
  #prepared: { version: number; policies: CompiledPolicySet } | undefined;
  /** Workload key -> its cookie and the netns it was enrolled from. */
  readonly #enrolled = new Map<string, { cookie: bigint; netns: string }>();
  readonly #byCookie = new Map<bigint, WorkloadView>();
  #loop: Promise<void> | undefined;
  #again = false;

  constructor(opts: StateUpdaterOptions) {
    this.#o = opts;
    this.#log = opts.log ?? silentLogger();
    this.view = MeshView.build(opts.state, opts.node);
    this.#policies = compilePolicies(this.view.policies);
  }

  get policies(): CompiledPolicySet {
    return this.#policies;
  }

  /** The enrolled workload of a netns cookie. */
  workloadOfCookie(cookie: bigint): WorkloadView | undefined {
    return this.#byCookie.get(cookie);
  }

  /** Enrolled workloads and their netns cookies. */
  enrolled(): [bigint, WorkloadView][] {
    return [...this.#byCookie.entries()];
  }

  /**
   * Refuses a version this proxy cannot run (the previous one then stays);
   * compiles its policies for commit(). A local workload whose netns does not
   * exist refuses a version from the controller (it hears why, in the NACK);
   * in the last config kept on disk (`missingNetns: 'skip'`) it is taken
   * without being enrolled, since one pod gone while the proxy was down must
   * not leave every other pod of the node without its policies.
   */
  validate(staged: Staged, opts: { missingNetns?: 'refuse' | 'skip' } = {}): string | null {
    this.#prepared = undefined;
    const exists = this.#o.exists ?? fs.existsSync;
    const skipped: string[] = [];
    // Only what the version sets can be new: the rest was checked when it came.
    for (const [key, raw] of staged.upserts) {
      if (!key.startsWith('Workload/')) continue;
      const w = raw as { spec: { node: string; netns?: string } };
      if (w.spec.node !== this.#o.node || !w.spec.netns || exists(w.spec.netns)) continue;
      if (opts.missingNetns !== 'skip') return `${key}: its netns ${w.spec.netns} does not exist on node ${this.#o.node}`;
      skipped.push(`${key} (${w.spec.netns})`);
    }
    if (skipped.length) this.#log.warn({ count: skipped.length, workloads: skipped.slice(0, 20) }, 'workloads of the kept config whose netns is gone are not enrolled');
    // Policies compile together; a version that sets none leaves them as they were.
    const touches = staged.replace || [...staged.upserts.keys(), ...staged.removals].some((k) => k.startsWith('AuthorizationPolicy/'));
    if (!touches) return null;
    try {
      this.#prepared = { version: staged.version, policies: compilePolicies([...staged.entriesOf('AuthorizationPolicy')].map(([, v]) => v as never)) };
    } catch (err) {
      return `authorization policies: ${(err as Error).message}`;
    }
    return null;
  }

  /** A version was taken: lookups and policies now, enrollment and certificates in the loop. */
  commit(result: ApplyResult): void {
    this.view.update(this.#o.state, result.changed);
    if (this.#prepared?.version === result.version) this.#policies = this.#prepared.policies;
    this.#prepared = undefined;
    this.#o.onCommit?.(this.view);
    void this.reconcile();
  }

  /** Brings enrollment and certificates to the current view; resolves once no pass is pending. */
  reconcile(): Promise<void> {
    this.#again = true;
    this.#loop ??= (async () => {
      try {
        while (this.#again) {
          this.#again = false;
          await this.#pass();
        }
      } finally {
        this.#loop = undefined;
      }
    })();
    return this.#loop;
  }

  async #pass(): Promise<void> {
    const view = this.view;
    const certs = this.#o.certificates;
    if (certs) {
      const identities = new Set(view.localWorkloads.filter((w) => w.identity).map((w) => w.identity));
      for (const id of identities) certs.want(id);
      for (const id of certs.wanted()) if (!identities.has(id)) certs.drop(id);
    }
    const ops = this.#o.enrollment;
    if (!ops) return;
    const want = new Map(view.localWorkloads.filter((w) => w.netns).map((w) => [w.key, w]));
    for (const [key, e] of this.#enrolled) {
      // Gone, or moved to another netns: that one is enrolled below.
      if (want.get(key)?.netns === e.netns) continue;
      ops.unenroll(e.cookie, e.netns);
      this.#enrolled.delete(key);
      this.#byCookie.delete(e.cookie);
      this.#log.info({ workload: key }, 'unenrolled');
    }
    let index = 0;
    for (const [key, w] of want) {
      // A newer version came while an enroll was in flight: start over from it.
      if (this.#again) return;
      index++;
      const flags = this.#o.podFlags?.(view, w) ?? 0;
      let cookie = this.#enrolled.get(key)?.cookie;
      if (cookie === undefined) {
        const netns = w.netns!;
        try {
          cookie = await ops.enroll(netns, { index, flags });
        } catch (err) {
          this.#log.warn({ workload: key, netns, err: (err as Error).message }, 'cannot enroll');
          continue;
        }
        this.#enrolled.set(key, { cookie, netns });
        this.#log.info({ workload: key, netns: w.netns, cookie: String(cookie), strict: (flags & POD_STRICT) !== 0, failOpen: (flags & POD_FAIL_OPEN) !== 0 }, 'enrolled');
      } else {
        ops.update(cookie, { index, flags });
      }
      this.#byCookie.set(cookie, w);
    }
  }
}
