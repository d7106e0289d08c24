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
export { cidrContains, parseCidr as parseIpBlock, parseIp, type Cidr, type Ip } from '../../api/address';
export { dialVerdict, OwnAddresses, type DialRefusal, type DialVerdict } from './dial-target';
