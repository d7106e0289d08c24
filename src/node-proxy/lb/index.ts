export { createBalancer, registerBalancer, registeredPolicies } from './balancer';
export { ConsistentHashPicker, hash32, VNODES_PER_ENDPOINT } from './consistent-hash';
export { EWMA_DEFAULTS, type EwmaOptions } from './ewma';
export { LeastRequestPicker } from './least-request';
export { LocalityBalancer } from './locality';
export { OUTLIER_DEFAULTS, OutlierDetector, type OutlierOptions, type OutlierState } from './outlier';
export { P2cEwmaPicker } from './p2c-ewma';
export { RoundRobinPicker } from './round-robin';
export type { Balancer, BalancerFactory, BalancerOptions, BalancerPolicy, BalancerStats, Endpoint, EndpointState, PickContext, Picker } from './types';
