export { HandshakeGuard, ListenerGuard, ListenerReporter, peerAddress, type ListenerMetrics, type RejectReason } from './guard';
export { guardSession, h2SessionOptions, headerListSize } from './h2';
export { createHttpServer } from './http';
export {
  fdBudget,
  fdBudgetProblem,
  LISTENER_DEFAULTS,
  listenerLimits,
  type H2Limits,
  type HttpLimits,
  type ListenerLimits,
  type ListenerOverrides,
  type RejectLogLimits,
  type TcpLimits,
  type TunnelLimits,
} from './limits';
export { LISTENER_FLAGS, limitsFromFlags, listenerFlagOptions } from './flags';
