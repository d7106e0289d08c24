export { MESH_CONFIG_KEY, Registry, REVOCATION_LIST_KEY, ROOT_NAMESPACE, spiffeId, TRUST_BUNDLE_KEY, wants, type Endpoint, type ItemState } from './registry';
