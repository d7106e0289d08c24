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
import * as net from 'node:net';

import { parseSpiffeId } from '../../api/identity';
import type { Logger } from '../../log';
import type { FlowTable, Flow } from '../flows';
import type { WorkloadCertificates } from '../identity';
import type { ListenerLimits, ListenerReporter } from '../listeners';
import { connectionLabels, type ProxyMetrics } from '../metrics';
import type { DialGuard } from '../outbound';
import type { CompiledPolicySet } from '../policy';
import type { MeshView } from '../state';
import { HboneServer, type InboundDecision, type InboundRequest } from '../tunnel';
import { checkClaimedSource } from './source-address';

export interface InboundOptions {
  node: string;
  view(): MeshView;
  policies(): CompiledPolicySet;
  certs: WorkloadCertificates;
  flows: FlowTable;
  metrics: ProxyMetrics;
  log: Logger;
  /** Where deliveries to local pods come from (STRICT pods accept only the proxy). */
  localAddress?(family: 4 | 6): string | undefined;
  limits?: Pick<ListenerLimits, 'tunnel' | 'h2'>;
  reporter?: ListenerReporter;
  /** Refuses targets the proxy must never dial (its own, loopback, unspecified, link-local addresses). */
  dialGuard: DialGuard;
}

function namespaceOf(principal: string): string | undefined {
  return parseSpiffeId(principal)?.namespace;
}

export function inboundServer(o: InboundOptions): HboneServer {
  const flows = new WeakMap<InboundRequest, Flow>();
  /** The client address authorize() believed, for the flow. */
  const sources = new WeakMap<InboundRequest, string>();
  return new HboneServer({
    trustBundle: () => o.view().trustBundle,
    revoked: (serial) => o.view().revokedSerials.has(serial),
    dial: (target) => {
      const local = o.localAddress?.(net.isIPv6(target.host) ? 6 : 4);
      return net.connect({ host: target.host, port: target.port, allowHalfOpen: true, ...(local ? { localAddress: local } : {}) });
    },
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
        const reason = e.decision.accept ? 'allowed' : e.decision.reason;
        const policy = e.decision.accept ? undefined : e.decision.policy;
        const flow = o.flows.open({
          node: o.node,
          source: { identity: e.req.peer.principal, namespace: ns, ip: sources.get(e.req) ?? '', port: 0 },
          destination: { workload: w?.name, namespace: w?.namespace, identity: w?.identity, address: `${e.req.target.host}:${e.req.target.port}`, originalAddress: `${e.req.target.host}:${e.req.target.port}` },
          verdict: e.decision.accept ? 'allowed' : 'denied',
          reason: reason ?? 'denied',
          policy,
          security: 'mutual_tls',
        });
        flows.set(e.req, flow);
        if (e.decision.accept) {
          o.metrics.opened.inc(labels);
          o.metrics.active.inc();
        } else {
          o.metrics.denied.inc({ ...labels, reason: reason ?? '', policy: policy ?? '' });
        }
      } else {
        const flow = flows.get(e.req);
        if (flow) o.flows.close(flow, e.closeReason ?? (e.decision.accept ? 'closed' : 'denied'), e.bytesIn ?? 0, e.bytesOut ?? 0);
        if (e.decision.accept) {
          o.metrics.active.dec();
          o.metrics.closed.inc(labels);
          o.metrics.sent.inc(labels, e.bytesIn ?? 0);
          o.metrics.received.inc(labels, e.bytesOut ?? 0);
        }
      }
    },
    // The listener reporter already counts these and logs them, rate limited: a peer decides how many there are.
    onConnectionRefused: (e) => o.log.debug({ event: 'security', remote: e.remoteAddress, reason: e.reason }, 'tunnel connection refused'),
    limits: o.limits,
    reporter: o.reporter,
  });
}
