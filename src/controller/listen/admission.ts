/**
 * Why the controller's listeners refuse or cut a connection: the label
 * values of nodemesh_controller_listener_rejected_total{reason}. The tables
 * that decide are shared with the node proxy (../../net).
 */
import type { Admission } from '../../net';

export type Refusal =
  | 'total_limit'
  | 'peer_limit'
  | 'handshake_limit'
  | 'handshake_timeout'
  | 'handshake_failed'
  | 'not_h2'
  | 'ping_flood'
  | 'settings_flood'
  | 'reset_flood'
  | 'request_timeout'
  | 'idle_timeout'
  | 'bad_request';

/** The controller's reason for what the shared admission table (../../net) refused on. */
export const ADMISSION_REFUSAL: Readonly<Record<Extract<Admission, { admitted: false }>['reason'], Refusal>> = Object.freeze({
  total: 'total_limit',
  'per-peer': 'peer_limit',
});
