/**
 * Bootstrap (a node joins with a token and gets its certificate) and
 * Certificates (a node gets workload certificates, only for workloads placed
 * on it). Every refusal is a security event: logged at warn with its reason.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

import * as grpc from '@grpc/grpc-js';

import type { Workload } from '../../api/kinds';
import type * as pb from '../../api/proto';
import { MeshError } from '../../errors';
import { CaError, parseSpiffeId, spiffeNodeId, type CertificateAuthority, type IssuedCertificate } from '../ca';
import type { Registry } from '../registry';
import type { TokenStore } from '../store';
import { callerOf, requireAdmin, requireNode } from './auth';
import { unary, type HandlerContext } from './handler';

export const NODE_CERT_LIFETIME_S = 7 * 24 * 3600;
const DEFAULT_TOKEN_TTL_S = 24 * 3600;

function sha256(s: string): string {
  return createHash('sha256').update(s).digest('hex');
}

function certResponse(c: IssuedCertificate, ca: CertificateAuthority): pb.CertificateResponse {
  return { certificateChainPem: c.chainPem, trustBundlePem: ca.rootPem, expiresUnixMs: c.notAfter.getTime(), trustDomain: ca.trustDomain };
}

export function certificateServices(
  ctx: HandlerContext,
  ca: CertificateAuthority,
  tokens: TokenStore,
  registry: Registry,
  workloadLifetime: () => number,
): { bootstrap: grpc.UntypedServiceImplementation; certificates: grpc.UntypedServiceImplementation } {
  const refuse = (kind: string, fields: Record<string, unknown>, reason: string): never => {
    ctx.metrics.certificatesRefused.inc({ kind });
    ctx.log.warn({ event: 'security', kind, ...fields, reason }, 'certificate request refused');
    throw new CaError('NM_ERR_CA_REFUSED', reason);
  };

  const bootstrap: grpc.UntypedServiceImplementation = {
    Join: unary<pb.JoinRequest, { certificate: pb.CertificateResponse }>(ctx, 'Bootstrap.Join', async (call) => {
      const { token, node, csrPem } = call.request;
      const peer = call.getPeer();
      const [id, secret] = token.split('.');
      const stored = id && secret ? tokens.getToken(id) : undefined;
      const ok =
        stored !== undefined &&
        stored.expiresAt > Date.now() &&
        timingSafeEqual(Buffer.from(stored.secretHash, 'hex'), Buffer.from(sha256(secret!), 'hex'));
      if (!ok) {
        ctx.metrics.certificatesRefused.inc({ kind: 'node' });
        ctx.log.warn({ event: 'security', peer, node }, 'join refused: unknown or expired bootstrap token');
        throw new MeshError('NM_ERR_TOKEN', 'unknown or expired bootstrap token: create one with `nodemesh controller token create --node NODE`');
      }
      if (stored.node !== node) refuse('node', { peer, node, tokenNode: stored.node }, `this token is for node ${stored.node}, not ${node}`);
      const want = spiffeNodeId(ca.trustDomain, node);
      const cert = await ca.signCsr(csrPem, {
        kind: 'node',
        lifetimeSeconds: NODE_CERT_LIFETIME_S,
        allowedUris: (uris) => (uris.length === 1 && uris[0] === want ? null : `a node certificate for ${node} must name ${want}, not ${uris.join(', ') || 'nothing'}`),
      }).catch((err: unknown) => (err instanceof CaError && err.code === 'NM_ERR_CA_REFUSED' ? refuse('node', { peer, node }, err.message) : Promise.reject(err)));
      ctx.metrics.certificatesIssued.inc({ kind: 'node' });
      ctx.log.info({ node, peer, notAfter: cert.notAfter }, 'node joined');
      return { certificate: certResponse(cert, ca) };
    }),

    CreateToken: unary<pb.CreateTokenRequest, pb.CreateTokenResponse>(ctx, 'Bootstrap.CreateToken', (call) => {
      requireAdmin(callerOf(call, ca));
      const { node } = call.request;
      if (!/^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$/.test(node)) throw new MeshError('NM_ERR_USAGE', `node name "${node}" must be 1-63 letters, digits, ".", "_" or "-"`);
      const ttl = call.request.ttlSeconds || DEFAULT_TOKEN_TTL_S;
      const id = randomBytes(4).toString('hex');
      const secret = randomBytes(16).toString('hex');
      const now = Date.now();
      tokens.deleteExpiredTokens(now);
      tokens.putToken({ id, node, secretHash: sha256(secret), expiresAt: now + ttl * 1000, createdAt: now });
      ctx.log.info({ node, tokenId: id, ttl }, 'bootstrap token created');
      return { token: `${id}.${secret}`, expiresUnixMs: now + ttl * 1000 };
    }),
  };

  const certificates: grpc.UntypedServiceImplementation = {
    Sign: unary<{ csrPem: string }, { certificate: pb.CertificateResponse }>(ctx, 'Certificates.Sign', async (call) => {
      const node = requireNode(callerOf(call, ca));
      const peer = call.getPeer();
      const own = spiffeNodeId(ca.trustDomain, node);
      let kind: 'workload' | 'node' = 'workload';
      const cert = await ca
        .signCsr(call.request.csrPem, {
          // The node's own identity renews its node certificate; anything else is a workload.
          kind: (uri) => (kind = uri === own ? 'node' : 'workload'),
          lifetimeSeconds: (k) => (k === 'node' ? NODE_CERT_LIFETIME_S : workloadLifetime()),
          allowedUris: (uris) => {
            if (uris.length !== 1) return `a CSR must carry exactly one SPIFFE URI, not ${uris.length}`;
            const uri = uris[0]!;
            if (uri === own) return null;
            const id = parseSpiffeId(uri);
            if (!id || id.trustDomain !== ca.trustDomain || !id.namespace || !id.serviceAccount)
              return `${uri} is not a workload identity of trust domain ${ca.trustDomain} (spiffe://${ca.trustDomain}/ns/NS/sa/SA)`;
            const here = registry.workloadsOn(node).some((w: Workload) => (w.metadata.namespace ?? 'default') === id.namespace && w.spec.serviceAccount === id.serviceAccount);
            return here ? null : `node ${node} runs no workload with identity ${uri}: a node may only get certificates for workloads placed on it`;
          },
        })
        .catch((err: unknown) => (err instanceof CaError && (err.code === 'NM_ERR_CA_REFUSED' || err.code === 'NM_ERR_CA_BAD_ID') ? refuse(kind, { node, peer }, err.message) : Promise.reject(err)));
      ctx.metrics.certificatesIssued.inc({ kind });
      ctx.log.info({ node, uris: cert.uris, notAfter: cert.notAfter }, 'certificate issued');
      return { certificate: certResponse(cert, ca) };
    }),
  };

  return { bootstrap, certificates };
}
