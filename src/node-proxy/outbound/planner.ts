/**
 * What one attempt of an outbound connection does, decided without I/O:
 * given the target the balancer chose (or none), whether it goes through a
 * tunnel to another node's proxy (which then decides) or straight, and, for
 * a straight one, whether this node may dial it and what the policies say.
 * The listener then connects, or records the refusal. Pure, so every branch
 * has a table test without sockets or root.
 */
import type { CompiledPolicySet, Decision, DialVerdict, ConnectionFacts as PolicyFacts } from '../policy';
import type { Target } from '../upstream';

export type { Target };

export interface AttemptInput {
  /** This proxy's node. */
  node: string;
  /** The next target, or undefined when none is left. */
  target: Target | undefined;
  /** Attempts made before this one. */
  tried: number;
  source: { identity?: string; namespace?: string; ip: string };
  /** Whether this proxy opens tunnels (without, every destination is dialled straight). */
  tunnels: boolean;
  /** This namespace's verdict on dialling an address ("this host" is the node, not the pod). */
  dialCheck(address: string): DialVerdict;
  policies: CompiledPolicySet;
}

export type AttemptPlan =
  /** No target: the connection fails (`connect-failed` after attempts, else `no-endpoint`). */
  | { kind: 'none'; reason: 'connect-failed' | 'no-endpoint' }
  /** Refused here: the dial guard, a policy, or a tunnel without a source identity. */
  | { kind: 'deny'; target: Target; tunneled: boolean; reason: string; policy?: string }
  /** Connect: through a tunnel (the destination's proxy decides) or straight (`decision` allowed it, or none applies to a passthrough). */
  | { kind: 'connect'; target: Target; tunneled: boolean; decision?: Decision; input?: PolicyFacts };

export function planAttempt(i: AttemptInput): AttemptPlan {
  const t = i.target;
  if (!t) return { kind: 'none', reason: i.tried > 0 ? 'connect-failed' : 'no-endpoint' };
  const w = t.workload;
  // A workload on another node: through a tunnel to its node, whose proxy decides.
  const tunneled = i.tunnels && w?.node !== undefined && w.node !== i.node && w.identity !== undefined;
  if (tunneled) {
    if (!i.source.identity) return { kind: 'deny', target: t, tunneled, reason: 'unknown-source' };
    return { kind: 'connect', target: t, tunneled };
  }
  const dial = i.dialCheck(t.address);
  if (!dial.allowed) return { kind: 'deny', target: t, tunneled, reason: dial.reason };
  // A passthrough has no mesh workload: no policy selects it.
  if (!w) return { kind: 'connect', target: t, tunneled };
  const input: PolicyFacts = {
    source: { principal: i.source.identity, namespace: i.source.namespace, ip: i.source.ip },
    destination: { namespace: w.namespace, labels: w.labels, ip: t.address, port: t.port },
  };
  const decision = i.policies.evaluate(input);
  if (!decision.allowed) return { kind: 'deny', target: t, tunneled, reason: decision.reason, ...(decision.policy ? { policy: decision.policy } : {}) };
  // What it was decided on, kept so a policy change can ask again (OutboundServer.recheck).
  return { kind: 'connect', target: t, tunneled, decision, input };
}
