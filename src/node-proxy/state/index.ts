export { ConfigRejected, ConfigState, type ApplyResult, type Progress, type Staged } from './config-state';
export { ConfigStream, type ConfigStreamEvents, type ConfigStreamOptions } from './config-stream';
export { MeshView, normalizeIp, type EndpointView, type ServiceView, type WorkloadView } from './mesh-view';
export { Backoff, BACKOFF_DEFAULTS, type BackoffOptions } from './backoff';
export { describeLink, formatAge, type ControllerLink } from './controller-link';
export { StateUpdater, type CertificateOps, type EnrollmentOps, type StateUpdaterOptions } from './updater';
export { applyLastGood, decodeLastGood, encodeLastGood, LAST_GOOD_DEFAULTS, LAST_GOOD_FILE, LastGoodError, LastGoodStore, wireItem, type LoadedConfig, type SavedConfig } from './last-good';
export { removeStaleTemps, writeFileAtomic } from './atomic-file';
