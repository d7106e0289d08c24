/**
 * The inbound side (15008): tunnels from other nodes' proxies. The tunnel
 * module checks the peer's certificate against the trust bundle and takes its
 * one SPIFFE URI as the source principal; here the CONNECT target must be a
 * workload on this node, and the destination's authorization policies decide
 * (the same evaluate() as everywhere). A denial answers 403 with the reason
 * and the policy, which the source proxy puts in its own flow.
 *
 * The client's address comes from the CONNECT's `Forwarded: for=`, believed
 * only when this peer may speak for it (./source-address); otherwise the
 * stream is refused, because policies evaluated without the address would
 * let a DENY by ipBlocks through.
 */
import { parseSpiffeId } from '../../api/identity';
import type { Logger } from '../../log';
import type { ConnectionRecorder, OpenConnection } from '../flows';
import type { WorkloadCertificates } from '../identity';
import type { ListenerLimits, ListenerReporter } from '../listeners';
import { connectionLabels } from '../metrics';
import type { DialGuard } from '../outbound';
import type { CompiledPolicySet } from '../policy';
import type { MeshView } from '../state';
import { HboneServer, type InboundDecision, type InboundRequest } from '../tunnel';
import type { UpstreamConnector } from '../upstream';
import { checkClaimedSource } from './source-address';

export interface InboundOptions {
  node: string;
  view(): MeshView;
  policies(): CompiledPolicySet;
  certs: WorkloadCertificates;
  /** Where each stream's flow, counters and access-log line are written. */
  recorder: ConnectionRecorder;
  /** Dials this node's pods, from the client's address or the proxy's (STRICT pods accept only the proxy's connections). */
  upstream: UpstreamConnector;
  log: Logger;
  limits?: Pick<ListenerLimits, 'tunnel' | 'h2'>;
  reporter?: ListenerReporter;
  /** Refuses targets the proxy must never dial (its own, loopback, unspecified, link-local addresses). */
  dialGuard: DialGuard;
}

function namespaceOf(principal: string): string | undefined {
  return parseSpiffeId(principal)?.namespace;
}

export function inboundServer(o: InboundOptions): HboneServer {
  const open = new WeakMap<InboundRequest, OpenConnection>();
  /** The client address authorize() believed, for the flow. */
  const sources = new WeakMap<InboundRequest, string>();
  return new HboneServer({
    trustBundle: () => o.view().trustBundle,
    revoked: (serial) => o.view().revokedSerials.has(serial),
    // From the client's address authorize() believed, where the pod's netns allows it.
    dial: (target, req) => o.upstream.dialLocal(target, sources.get(req)),
    serverCertificate: (identity) => {
      const c = o.certs.get(identity);
      return c ? { certPem: c.certPem, keyPem: c.keyPem } : undefined;
    },
    authorize: (req): InboundDecision => {
      const w = o.view().workloadAt(req.target.host);
      if (!w || !w.local) return { accept: false, status: 404, reason: `not-on-this-node ${req.target.host}` };
      // A workload registered with such an address would have the proxy dial itself.
      const dial = o.dialGuard.check(req.target.host);
      if (!dial.allowed) return { accept: false, status: 403, reason: dial.reason };
      const source = checkClaimedSource({ principal: req.peer.principal, remoteAddress: req.peer.remoteAddress, claimedSource: req.claimedSource }, (ip) => o.view().workloadAt(ip));
      if (!source.ok) {
        o.reporter?.reject('tunnel', 'source-address', { remote: req.peer.remoteAddress, detail: source.detail });
        return { accept: false, status: 403, reason: source.reason };
      }
      sources.set(req, source.ip);
      const d = o.policies().evaluate({
        source: { principal: req.peer.principal, namespace: namespaceOf(req.peer.principal), ip: source.ip },
        destination: { namespace: w.namespace, labels: w.labels, ip: req.target.host, port: req.target.port },
      });
      if (d.audit.length) o.log.info({ peer: req.peer.principal, target: req.target, audit: d.audit }, 'audited');
      return d.allowed ? { accept: true } : { accept: false, status: 403, reason: d.reason, ...(d.policy ? { policy: d.policy } : {}) };
    },
    onStream: (e) => {
      const w = o.view().workloadAt(e.req.target.host);
      const ns = namespaceOf(e.req.peer.principal);
      // Istio's labels, as the destination reports them.
      const labels = connectionLabels({
        reporter: 'destination',
        source_namespace: ns,
        source_principal: e.req.peer.principal,
        destination_workload: w?.name,
        destination_namespace: w?.namespace,
        connection_security_policy: 'mutual_tls',
      });
      if (e.phase === 'decided') {
        const address = `${e.req.target.host}:${e.req.target.port}`;
        const facts = {
          source: { identity: e.req.peer.principal, namespace: ns, ip: sources.get(e.req) ?? '', port: 0 },
          destination: { workload: w?.name, namespace: w?.namespace, identity: w?.identity, address, originalAddress: address },
          security: 'mutual_tls' as const,
          labels,
        };
        if (e.decision.accept) open.set(e.req, o.recorder.opened(facts, { reason: 'allowed' }));
        else o.recorder.refused(facts, { verdict: 'denied', reason: e.decision.reason || 'denied', ...(e.decision.policy ? { policy: e.decision.policy } : {}), closeReason: `denied: ${e.decision.reason}` });
      } else {
        open.get(e.req)?.close(e.closeReason ?? 'closed', e.bytesIn ?? 0, e.bytesOut ?? 0);
      }
    },
    // The listener reporter already counts these and logs them, rate limited: a peer decides how many there are.
    onConnectionRefused: (e) => o.log.debug({ event: 'security', remote: e.remoteAddress, reason: e.reason }, 'tunnel connection refused'),
    limits: o.limits,
    reporter: o.reporter,
  });
}
