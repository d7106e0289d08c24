export { BalancerCache, endpointsOf } from './balancers';
export { planOutbound, type OutboundPlan } from './plan';
export { OutboundServer, type OutboundOptions } from './server';
