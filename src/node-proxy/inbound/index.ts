export { inboundServer, type InboundOptions } from './server';
