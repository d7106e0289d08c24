/**
 * Whether a tunnel peer may speak for the client address it claims in
 * `Forwarded: for=`. The peer's certificate is a workload identity, and the
 * CA signs one for a node only while that node runs a workload with it; but
 * an identity (a service account) can have pods on several nodes, and a
 * certificate names no node. So the claim is believed only when the address
 * is a workload's in the mesh, that workload has the peer's identity, and the
 * tunnel comes from that workload's node (its published addresses). A node
 * that is broken into can then speak for its own pods only: not for another
 * node's, even of the same service account, and not for addresses outside
 * the mesh. Pure: the caller looks the address up and does the I/O.
 */
import { normalizeIp } from '../state';

/** The part of a workload this check reads. */
export interface SourceWorkload {
  identity: string;
  node: string;
  nodeAddresses: readonly string[];
}

export type SourceCheck = { ok: true; ip: string } | { ok: false; reason: 'no-source-address' | 'source-address-unverified'; detail: string };

export function checkClaimedSource(
  claim: { principal: string; remoteAddress: string; claimedSource?: string },
  workloadAt: (ip: string) => SourceWorkload | undefined,
): SourceCheck {
  const { principal, claimedSource } = claim;
  if (claimedSource === undefined) {
    // Without it every ipBlocks rule would be evaluated against nothing, and a DENY would let the connection in.
    return { ok: false, reason: 'no-source-address', detail: `${principal} sent no Forwarded: for= client address (a proxy older than this one?)` };
  }
  const ip = normalizeIp(claimedSource);
  const w = workloadAt(ip);
  if (!w) return { ok: false, reason: 'source-address-unverified', detail: `${principal} claims ${ip}, which is no workload's address in this node's view` };
  if (w.identity !== principal) return { ok: false, reason: 'source-address-unverified', detail: `${principal} claims ${ip}, which belongs to ${w.identity}` };
  const from = normalizeIp(claim.remoteAddress);
  if (!w.nodeAddresses.some((a) => normalizeIp(a) === from)) {
    return { ok: false, reason: 'source-address-unverified', detail: `${principal} claims ${ip} of node ${w.node} (${w.nodeAddresses.join(', ') || 'no published address'}), but the tunnel comes from ${from}` };
  }
  return { ok: true, ip };
}
