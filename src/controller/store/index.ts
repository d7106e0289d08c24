export { SqliteStore, EVENT_RETENTION } from './sqlite';
export {
  ConflictError,
  NotFoundError,
  StoreError,
  stableStringify,
  type ApplyAction,
  type ApplyOutcome,
  type BootstrapToken,
  type Change,
  type ChangeType,
  type DeleteTarget,
  type IssuedCertificateRecord,
  type JoinRecord,
  type NodeRecord,
  type ListOptions,
  type Store,
  type TokenStore,
} from './store';
