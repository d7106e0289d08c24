/** How `nodemesh status` and `nodemesh node list` say what config a node holds and why. Pure. */
import type { NodeStatusMessage } from '../api/proto';
import { formatAge } from '../node-proxy/state';

type NodeView = Pick<NodeStatusMessage, 'connected' | 'sentVersion' | 'ackedVersion' | 'nackedVersion' | 'nackReason' | 'lastError' | 'lastErrorUnixMs'>;

/**
 * The node's config in a word or two: NONE (it holds nothing and is not
 * getting any), `receiving` (connected, nothing applied yet), `current`
 * (holds all it was sent), `applying N`, `refused N` (it holds an older
 * version), `kept N` (not connected: serving the last version it took).
 */
export function configState(n: NodeView): string {
  if (n.ackedVersion === 0) return n.connected ? 'receiving' : 'NONE';
  if (!n.connected) return `kept ${n.ackedVersion}`;
  if (n.nackedVersion > n.ackedVersion) return `refused ${n.nackedVersion}`;
  if (n.ackedVersion < n.sentVersion) return `applying ${n.sentVersion}`;
  return 'current';
}

/** A refusal it still holds out on, then the last stream error with its age; '-' when there is neither. */
export function nodeProblem(n: NodeView, now = Date.now()): string {
  const parts: string[] = [];
  if (n.nackedVersion > n.ackedVersion && n.nackReason) parts.push(`refused ${n.nackedVersion}: ${n.nackReason}`);
  if (n.lastError) parts.push(`${n.lastErrorUnixMs ? `${formatAge(now - n.lastErrorUnixMs)} ago` : 'at an unknown time'}: ${n.lastError}`);
  return parts.length ? parts.join('; ') : '-';
}
