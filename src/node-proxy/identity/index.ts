export * from './csr';
export { joinController, loadNodeIdentity, NodeIdentityError, renewNodeIdentity, type NodeIdentity } from './node-identity';
export { WORKLOAD_CERTS_FILE, WorkloadCertificates, type SignFn, type WorkloadCertificate, type WorkloadCertificatesOptions } from './workload-certs';
export { NODE_SESSION_DEFAULTS, NodeSession, NodeSessionError, readBootstrapToken, TOKEN_ENV, type NodeSessionOptions } from './node-session';
