export { HbonePool, POOL_DEFAULTS, TunnelError, type TunnelDial, type TunnelErrorCode } from './client';
export { FORWARDED_HEADER, FORWARDED_MAX_LENGTH, formatForwarded, parseForwarded, type ForwardedParse } from './forwarded';
export {
  formatAuthority,
  HBONE_DEFAULTS,
  HboneServer,
  parseAuthority,
  REASON_HEADER,
  SecureContextCache,
  type HboneServerOptions,
  type InboundDecision,
  type InboundRequest,
  type InboundStreamEvent,
  type StreamFinish,
  type StreamHandler,
  type TunnelPeer,
} from './server';
export { certificateUris, identityToSni, sniToIdentity } from './sni';
