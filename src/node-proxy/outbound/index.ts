export { BalancerCache, endpointsOf } from './balancers';
export { planOutbound, type OutboundPlan } from './plan';
export { blameOf, OutboundServer, type OutboundOptions, type TunnelRequest } from './server';
export { DIAL_GUARD_DEFAULTS, DialGuard, type DialGuardOptions } from './dial-guard';
