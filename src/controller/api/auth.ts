/**
 * Who is calling: the controller's TLS asks for a client certificate but does
 * not require one (a joining node has only its bootstrap token), so every
 * handler checks the caller itself. A certificate counts only if it chains to
 * this controller's CA and is in its validity period; a node certificate also
 * only while the ledger has it unrevoked (checked on every call, so a revoked
 * node is refused at once on connections it already holds).
 */
import * as grpc from '@grpc/grpc-js';

import type { CertificateAuthority } from '../ca';
import { parseSpiffeId, spiffeAdminId } from '../ca';

export type Caller =
  | { kind: 'admin'; id: string }
  | { kind: 'node'; node: string; id: string; serial: string }
  | { kind: 'revoked'; node: string; id: string; reason: string }
  | { kind: 'anonymous'; reason: string };

/** Whether a node certificate still counts: the reason it does not, or undefined. */
export interface NodeCertificateCheck {
  refusal(node: string, cert: { serial: string; notBefore: Date; notAfter: Date }): string | undefined;
}

type AnyCall = { getAuthContext?: () => { sslPeerCertificate?: { raw?: Buffer } } | null; getPeer(): string };

export function callerOf(call: AnyCall, ca: CertificateAuthority, nodeCerts?: NodeCertificateCheck): Caller {
  const raw = call.getAuthContext?.()?.sslPeerCertificate?.raw;
  if (!raw) return { kind: 'anonymous', reason: 'no client certificate' };
  let peer: ReturnType<CertificateAuthority['verifyPeer']>;
  try {
    peer = ca.verifyPeer(raw);
  } catch (err) {
    return { kind: 'anonymous', reason: err instanceof Error ? err.message : String(err) };
  }
  const uris = peer.uris;
  const admin = spiffeAdminId(ca.trustDomain);
  if (uris.includes(admin)) return { kind: 'admin', id: admin };
  for (const u of uris) {
    const id = parseSpiffeId(u);
    const m = id && id.trustDomain === ca.trustDomain ? /^\/nodemesh\/node\/([^/]+)$/.exec(id.path) : null;
    if (!m) continue;
    const node = m[1]!;
    const refusal = nodeCerts?.refusal(node, peer);
    return refusal ? { kind: 'revoked', node, id: u, reason: refusal } : { kind: 'node', node, id: u, serial: peer.serial };
  }
  return { kind: 'anonymous', reason: `certificate identity ${uris.join(', ') || '(none)'} is neither the admin nor a node` };
}

export class AuthError extends Error {
  constructor(
    readonly grpcCode: grpc.status,
    message: string,
  ) {
    super(message);
  }
}

export function requireAdmin(caller: Caller): void {
  if (caller.kind === 'admin') return;
  if (caller.kind === 'anonymous') throw new AuthError(grpc.status.UNAUTHENTICATED, `admin credential required (${caller.reason}): use the credentials file the controller wrote (nodemesh --credentials FILE)`);
  throw new AuthError(grpc.status.PERMISSION_DENIED, `${caller.id} is a node, not the admin`);
}

export function requireNode(caller: Caller): string {
  if (caller.kind === 'node') return caller.node;
  if (caller.kind === 'revoked') throw new AuthError(grpc.status.PERMISSION_DENIED, caller.reason);
  if (caller.kind === 'anonymous') throw new AuthError(grpc.status.UNAUTHENTICATED, `node certificate required (${caller.reason}): join with a bootstrap token first`);
  throw new AuthError(grpc.status.PERMISSION_DENIED, 'the admin credential cannot act as a node');
}
