export {
  createBalancer,
  registerBalancer,
  registeredPolicies,
  type Balancer,
  type BalancerFactory,
  type BalancerOptions,
  type BalancerPolicy,
  type BalancerStats,
  type Endpoint,
  type PickContext,
} from './balancer';
export { ConsistentHashPicker, hash32, VNODES_PER_ENDPOINT } from './consistent-hash';
export { LeastRequestPicker } from './least-request';
export { LocalityBalancer, type EndpointState, type Picker } from './locality';
export { OUTLIER_DEFAULTS, OutlierDetector, type OutlierOptions, type OutlierState } from './outlier';
export { EWMA_DEFAULTS, P2cEwmaPicker, type EwmaOptions } from './p2c-ewma';
export { RoundRobinPicker } from './round-robin';
