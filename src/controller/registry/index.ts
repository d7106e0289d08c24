export { MESH_CONFIG_KEY, Registry, REVOCATION_LIST_KEY, ROOT_NAMESPACE, spiffeId, TRUST_BUNDLE_KEY, wants, isScopedKey, NODE_KEY_PREFIX, type ItemState } from './registry';
