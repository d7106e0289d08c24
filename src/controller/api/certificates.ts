/**
 * Bootstrap (a node joins with a token and gets its certificate) and
 * Certificates (a node gets workload certificates, only for workloads placed
 * on it). Every refusal is a security event: logged at warn with its reason.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

import * as grpc from '@grpc/grpc-js';

import { IdentityError } from '../../api/identity';
import type { Workload } from '../../api/kinds';
import type * as pb from '../../api/proto';
import { MeshError } from '../../errors';
import { CaError, parseSpiffeId, spiffeNodeId, type CertificateAuthority, type IssuedCertificate } from '../ca';
import type { Registry } from '../registry';
import type { TokenStore } from '../store';
import { AuthError, callerOf, requireAdmin, requireNode } from './auth';
import { TOKEN_DEFAULTS, type CertificateLedger } from './ledger';
import { unary, type HandlerContext } from './handler';

const NODE_NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$/;

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
  ledger: CertificateLedger,
  registry: Registry,
  lifetimes: { workload: () => number; node: () => number },
): { bootstrap: grpc.UntypedServiceImplementation; certificates: grpc.UntypedServiceImplementation } {
  const refuse = (kind: string, fields: Record<string, unknown>, reason: string): never => {
    ctx.metrics.certificatesRefused.inc({ kind });
    ctx.log.warn({ event: 'security', kind, ...fields, reason }, 'certificate request refused');
    throw new CaError('NM_ERR_CA_REFUSED', reason);
  };
  const badToken = (fields: Record<string, unknown>, reason: string): MeshError => {
    ctx.metrics.certificatesRefused.inc({ kind: 'node' });
    ctx.log.warn({ event: 'security', ...fields, reason }, 'join refused');
    return new MeshError('NM_ERR_TOKEN', reason);
  };

  const bootstrap: grpc.UntypedServiceImplementation = {
    Join: unary<pb.JoinRequest, { certificate: pb.CertificateResponse }>(ctx, 'Bootstrap.Join', async (call) => {
      const { token, node, csrPem } = call.request;
      const peer = call.getPeer();
      const [id, secret] = token.split('.');
      const stored = id && secret ? tokens.getToken(id) : undefined;
      const create = `create one with \`nodemesh controller token create --node ${NODE_NAME_RE.test(node) ? node : 'NODE'}\``;
      if (!stored || !timingSafeEqual(Buffer.from(stored.secretHash, 'hex'), Buffer.from(sha256(secret!), 'hex')))
        throw badToken({ peer, node }, `unknown bootstrap token: ${create}`);
      const now = Date.now();
      const fields = { peer, node, tokenId: stored.id };
      if (stored.expiresAt <= now) throw badToken(fields, `bootstrap token ${stored.id} expired at ${new Date(stored.expiresAt).toISOString()}: ${create}`);
      const spent = `bootstrap token ${stored.id} was already used (${stored.uses} of ${stored.uses} join${stored.uses === 1 ? '' : 's'}): ${create}`;
      if (stored.used >= stored.uses) throw badToken(fields, spent);
      if (stored.node !== '' && stored.node !== node) refuse('node', { ...fields, tokenNode: stored.node }, `this token is for node ${stored.node}, not ${node}`);
      // A token made for no node in particular may not take over a name that already joined (or was revoked).
      if (stored.node === '' && ledger.node(node)) refuse('node', fields, `node ${node} joined before: a token for any node cannot join it again; ${create}`);
      const want = spiffeNodeId(ca.trustDomain, node);
      const cert = await ca.signCsr(csrPem, {
        kind: 'node',
        lifetimeSeconds: lifetimes.node(),
        allowedUris: (uris) => (uris.length === 1 && uris[0] === want ? null : `a node certificate for ${node} must name ${want}, not ${uris.join(', ') || 'nothing'}`),
      }).catch((err: unknown) => (err instanceof CaError && err.code === 'NM_ERR_CA_REFUSED' ? refuse('node', fields, err.message) : Promise.reject(err)));
      // The certificate leaves only if this join took a use of the token: a concurrent one may have taken the last.
      if (!tokens.consumeToken({ tokenId: stored.id, now: Date.now(), certificate: ledger.toRecord(cert, node, 'node') })) throw badToken(fields, spent);
      ctx.metrics.certificatesIssued.inc({ kind: 'node' });
      ctx.log.info({ node, peer, tokenId: stored.id, serial: cert.serial, notAfter: cert.notAfter }, 'node joined');
      return { certificate: certResponse(cert, ca) };
    }),

    CreateToken: unary<pb.CreateTokenRequest, pb.CreateTokenResponse>(ctx, 'Bootstrap.CreateToken', (call) => {
      requireAdmin(callerOf(call, ca, ledger));
      const { node } = call.request;
      if (node !== '' && !NODE_NAME_RE.test(node)) throw new MeshError('NM_ERR_USAGE', `node name "${node}" must be 1-63 letters, digits, ".", "_" or "-"`);
      const ttl = call.request.ttlSeconds || TOKEN_DEFAULTS.ttlSeconds;
      if (ttl > TOKEN_DEFAULTS.maxTtlSeconds) throw new MeshError('NM_ERR_USAGE', `a token's TTL may be at most ${TOKEN_DEFAULTS.maxTtlSeconds / 3600} h, not ${ttl} s (create a new token when it runs out)`);
      const uses = call.request.uses || TOKEN_DEFAULTS.uses;
      if (uses > TOKEN_DEFAULTS.maxUses) throw new MeshError('NM_ERR_USAGE', `a token allows at most ${TOKEN_DEFAULTS.maxUses} joins, not ${uses}`);
      const id = randomBytes(4).toString('hex');
      const secret = randomBytes(16).toString('hex');
      const now = Date.now();
      tokens.deleteExpiredTokens(now - TOKEN_DEFAULTS.retainSeconds * 1000);
      tokens.putToken({ id, node, secretHash: sha256(secret), expiresAt: now + ttl * 1000, createdAt: now, uses, used: 0 });
      ctx.log.info({ node: node || '(any new node)', tokenId: id, ttl, uses }, 'bootstrap token created');
      return { token: `${id}.${secret}`, expiresUnixMs: now + ttl * 1000, uses };
    }),
  };

  const certificates: grpc.UntypedServiceImplementation = {
    Sign: unary<{ csrPem: string }, { certificate: pb.CertificateResponse }>(ctx, 'Certificates.Sign', async (call) => {
      const node = requireNode(callerOf(call, ca, ledger));
      const peer = call.getPeer();
      const own = spiffeNodeId(ca.trustDomain, node);
      let kind: 'workload' | 'node' = 'workload';
      let exhausted = false;
      const cert = await ca
        .signCsr(call.request.csrPem, {
          // The node's own identity renews its node certificate; anything else is a workload.
          kind: (uri) => (kind = uri === own ? 'node' : 'workload'),
          lifetimeSeconds: (k) => (k === 'node' ? lifetimes.node() : lifetimes.workload()),
          allowedUris: (uris) => {
            if (uris.length !== 1) return `a CSR must carry exactly one SPIFFE URI, not ${uris.length}`;
            const uri = uris[0]!;
            const tooMany = ledger.issueRefusal(node, uri);
            if (tooMany) {
              exhausted = true;
              return tooMany;
            }
            if (uri === own) return null;
            const id = parseSpiffeId(uri);
            if (!id || id.trustDomain !== ca.trustDomain || !id.namespace || !id.serviceAccount)
              return `${uri} is not a workload identity of trust domain ${ca.trustDomain} (spiffe://${ca.trustDomain}/ns/NS/sa/SA)`;
            const here = registry.workloadsOn(node).some((w: Workload) => (w.metadata.namespace ?? 'default') === id.namespace && w.spec.serviceAccount === id.serviceAccount);
            return here ? null : `node ${node} runs no workload with identity ${uri}: a node may only get certificates for workloads placed on it`;
          },
        })
        .catch((err: unknown) => {
          if (exhausted && err instanceof CaError) {
            ctx.metrics.certificatesRefused.inc({ kind });
            ctx.log.warn({ event: 'security', kind, node, peer, reason: err.message }, 'certificate request refused: too many live certificates');
            throw new AuthError(grpc.status.RESOURCE_EXHAUSTED, err.message);
          }
          return (err instanceof CaError && err.code === 'NM_ERR_CA_REFUSED') || err instanceof IdentityError ? refuse(kind, { node, peer }, err.message) : Promise.reject(err);
        });
      // Signing yielded: a revoke may have come in meanwhile. Checked again and recorded in one
      // synchronous step, so a revocation either names this certificate or refuses it here.
      requireNode(callerOf(call, ca, ledger));
      ledger.record(cert, node, kind);
      ctx.metrics.certificatesIssued.inc({ kind });
      ctx.log.info({ node, uris: cert.uris, serial: cert.serial, notAfter: cert.notAfter }, 'certificate issued');
      return { certificate: certResponse(cert, ca) };
    }),
  };

  return { bootstrap, certificates };
}
