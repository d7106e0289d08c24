export { inboundServer, type InboundOptions } from './server';
export { checkClaimedSource, type SourceCheck, type SourceWorkload } from './source-address';
