export * from './csr';
export { joinController, loadNodeIdentity, NodeIdentityError, renewNodeIdentity, type NodeIdentity } from './node-identity';
