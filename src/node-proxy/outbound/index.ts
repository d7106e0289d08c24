export { BalancerCache, endpointsOf } from './balancers';
export { planOutbound, type OutboundPlan } from './plan';
export { OutboundServer, type OutboundOptions } from './server';
export { DIAL_GUARD_DEFAULTS, DialGuard, type DialGuardOptions } from './dial-guard';
