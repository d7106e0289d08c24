/**
 * Why a connection would be allowed or denied: the policies that select the
 * destination, the decision, and the rule that made it. Uses the same
 * evaluate() as the proxy; the deciding rule is found by evaluating the
 * deciding policy one rule at a time.
 */
import type { AuthorizationPolicy } from '../../api/kinds';
import { applicablePolicies, evaluate, type ConnectionFacts, type Decision } from './evaluate';

export interface Explanation {
  /** ns/name and action of each policy that applies to the destination. */
  applicable: { policy: string; action: string }[];
  decision: Decision;
  /** Index in spec.rules of the deciding policy's rule that matched. */
  rule?: number;
}

const nameOf = (p: AuthorizationPolicy): string => `${p.metadata.namespace ?? 'default'}/${p.metadata.name}`;

export function explainConnection(facts: ConnectionFacts, policies: readonly AuthorizationPolicy[]): Explanation {
  const applicable = applicablePolicies(policies, facts.destination);
  const decision = evaluate(facts, policies);
  const out: Explanation = { applicable: applicable.map((p) => ({ policy: nameOf(p), action: p.spec.action })), decision };
  const decider = decision.policy ? applicable.find((p) => nameOf(p) === decision.policy) : undefined;
  if (decider) {
    const rules = decider.spec.rules ?? [];
    for (let i = 0; i < rules.length; i++) {
      const single: AuthorizationPolicy = { ...decider, spec: { ...decider.spec, rules: [rules[i]!] } };
      if (evaluate(facts, [single]).policy === decision.policy) {
        out.rule = i;
        break;
      }
    }
  }
  return out;
}
