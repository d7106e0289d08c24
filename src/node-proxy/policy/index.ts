export {
  applicablePolicies,
  compilePolicies,
  evaluate,
  ROOT_NAMESPACE,
  type CompiledPolicySet,
  type ConnectionFacts,
  type Decision,
  type Verdict,
} from './evaluate';
export { explainConnection, type Explanation } from './explain';
