export { ConfigRejected, ConfigState, type ApplyResult, type Staged } from './config-state';
export { ConfigStream, type ConfigStreamEvents, type ConfigStreamOptions } from './config-stream';
