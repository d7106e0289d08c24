/**
 * Who is calling: the controller's TLS asks for a client certificate but does
 * not require one (a joining node has only its bootstrap token), so every
 * handler checks the caller itself. A certificate counts only if it chains to
 * this controller's CA and is in its validity period.
 */
import * as grpc from '@grpc/grpc-js';

import type { CertificateAuthority } from '../ca';
import { parseSpiffeId, spiffeAdminId } from '../ca';

export type Caller = { kind: 'admin'; id: string } | { kind: 'node'; node: string; id: string } | { kind: 'anonymous'; reason: string };

type AnyCall = { getAuthContext?: () => { sslPeerCertificate?: { raw?: Buffer } } | null; getPeer(): string };

export function callerOf(call: AnyCall, ca: CertificateAuthority): Caller {
  const raw = call.getAuthContext?.()?.sslPeerCertificate?.raw;
  if (!raw) return { kind: 'anonymous', reason: 'no client certificate' };
  let uris: string[];
  try {
    uris = ca.verifyPeer(raw).uris;
  } catch (err) {
    return { kind: 'anonymous', reason: err instanceof Error ? err.message : String(err) };
  }
  const admin = spiffeAdminId(ca.trustDomain);
  if (uris.includes(admin)) return { kind: 'admin', id: admin };
  for (const u of uris) {
    const id = parseSpiffeId(u);
    const m = id && id.trustDomain === ca.trustDomain ? /^\/nodemesh\/node\/([^/]+)$/.exec(id.path) : null;
    if (m) return { kind: 'node', node: m[1]!, id: u };
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
  if (caller.kind === 'anonymous') throw new AuthError(grpc.status.UNAUTHENTICATED, `node certificate required (${caller.reason}): join with a bootstrap token first`);
  throw new AuthError(grpc.status.PERMISSION_DENIED, 'the admin credential cannot act as a node');
}
