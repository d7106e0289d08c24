/**
 * What an upgrade's hand-over relies on for connections the old process had
 * not accepted yet (docs/architecture.md, 'Upgrades that drop nothing'): with
 * net.ipv4.tcp_migrate_req=1, which the proxy sets in its namespace, a
 * SO_REUSEPORT listener that closes hands the connections waiting in its
 * accept queue to another listener of its group instead of resetting them.
 * In a network namespace of the test's own, a listener that never accepts
 * holds about half of 64 connections when it closes; the control (0) shows
 * they would have been reset.
 */
import { execFileSync } from 'node:child_process';

import { t } from 'tap';

import { bpfTest } from '../helpers/bpf';
import { fixture } from '../helpers/child';

const NS = `nm-mig-${process.pid}`;

interface Outcome {
  greeted: number;
  reset: number;
  other: number;
  queuedOnClosed: number;
}

function run(migrate: 0 | 1): Outcome {
  const out = execFileSync('ip', ['netns', 'exec', NS, process.execPath, fixture('reuseport-migrate.js'), String(migrate), '64'], { encoding: 'utf8', timeout: 30_000 });
  return JSON.parse(out) as Outcome;
}

// Root for the namespace; no BPF, but the same gate says why it is skipped.
bpfTest(t, "a closing listener's queued connections move to its sibling", async (t) => {
  execFileSync('ip', ['netns', 'add', NS]);
  t.teardown(() => void execFileSync('ip', ['netns', 'del', NS]));
  execFileSync('ip', ['-n', NS, 'link', 'set', 'lo', 'up']);

  const on = run(1);
  t.comment(`tcp_migrate_req=1: ${on.queuedOnClosed} of 64 were queued on the listener that closed`);
  t.ok(on.queuedOnClosed > 0, 'some connections were waiting on the listener that closed');
  t.same({ greeted: on.greeted, reset: on.reset, other: on.other }, { greeted: 64, reset: 0, other: 0 }, 'with tcp_migrate_req=1 every one is served');

  const off = run(0);
  t.comment(`tcp_migrate_req=0: ${off.queuedOnClosed} queued, ${off.reset} reset`);
  t.ok(off.reset > 0, 'the control: without it, the queued ones are reset');
});
