export * from './csr';
export { joinController, loadNodeIdentity, NodeIdentityError, renewNodeIdentity, type NodeIdentity } from './node-identity';
export { WorkloadCertificates, type SignFn, type WorkloadCertificate, type WorkloadCertificatesOptions } from './workload-certs';
