/**
 * The outbound listener (15001): every TCP connection a pod opened, sent here
 * by the data path. Per connection: the origin from the kernel, the source
 * workload from its netns cookie (never from the source IP), a plan from the
 * config, an endpoint from the balancer, an authorization decision, then a
 * connection to the endpoint and bytes piped both ways with backpressure and
 * half-close. Config changes apply to new connections; established ones keep
 * going.
 */
import * as net from 'node:net';
import type { Duplex } from 'node:stream';

import { formatHostPort } from '../../api/address';
import type { Logger } from '../../log';
import type { Origin } from '../datapath';
import type { Flow, FlowTable } from '../flows';
import { LISTENER_DEFAULTS, ListenerGuard, ListenerReporter, peerAddress, type ListenerLimits } from '../listeners';
import { connectionLabels, type ConnectionLabels, type ProxyMetrics } from '../metrics';
import type { CompiledPolicySet } from '../policy';
import type { MeshView, WorkloadView } from '../state';
import { normalizeIp } from '../state';
import type { BalancerCache } from './balancers';
import { DialGuard } from './dial-guard';
import { TunnelError } from '../tunnel';
import { planOutbound } from './plan';
import { planAttempt, type Target } from './planner';

export interface OutboundOptions {
  node: string;
  /** The origin of an accepted socket (the data path), taken once. */
  originOf(socket: net.Socket): Origin | undefined;
  /** The local workload a netns cookie belongs to. */
  workloadOfCookie(cookie: bigint): WorkloadView | undefined;
  view(): MeshView;
  policies(): CompiledPolicySet;
  balancers: BalancerCache;
  flows: FlowTable;
  metrics: ProxyMetrics;
  log: Logger;
  connectTimeoutMs?: number;
  idleTimeoutMs?: number;
  /**
   * Opens a mutual-TLS tunnel stream to another node's proxy for a workload
   * there (see docs/architecture.md, 'One connection, end to end'). Without
   * it, every destination is dialled directly. Rejects with an error carrying
   * `status` (403: the destination refused, with `reason`) when the other
   * side says no.
   */
  tunnel?(req: TunnelRequest): Promise<Duplex>;
  /**
   * The address to deliver to this node's own pods from: STRICT pods accept
   * new connections only from the node proxy's addresses.
   */
  localAddress?(family: 4 | 6): string | undefined;
  /**
   * Refuses addresses the proxy must never dial for a pod (its own, loopback,
   * unspecified, link-local), whatever outboundTrafficPolicy says. Default: a
   * guard over this namespace's interface addresses.
   */
  dialGuard?: DialGuard;
  /** pino level of the access log line written when each connection closes (default info). */
  accessLogLevel?: 'trace' | 'debug' | 'info' | 'warn' | 'silent';
  /** Connections in total and per source pod (default LISTENER_DEFAULTS.outbound). */
  limits?: ListenerLimits['outbound'];
  reporter?: ListenerReporter;
}

export interface TunnelRequest {
  sourceIdentity: string;
  /** The pod's address as it dialled (the accepted socket's peer): the destination evaluates source.ip and ipBlocks with it. */
  sourceAddress: string;
  destination: { identity: string; node: string; nodeAddresses: readonly string[] };
  target: { host: string; port: number };
}


/**
 * Whose fault a failed connect is: only an endpoint's own failure feeds its
 * balancer (latency, outlier ejection); a local one (no certificate for the
 * source, say) fails the connection without blaming or trying endpoints.
 * A direct connect that fails is the endpoint's.
 */
export function blameOf(err: unknown): 'local' | 'tunnel' | 'endpoint' | 'refused' {
  return err instanceof TunnelError ? err.blame : 'endpoint';
}

const UNKNOWN = 'unknown';

export class OutboundServer {
  readonly server: net.Server;
  readonly #o: OutboundOptions;
  readonly #connectTimeout: number;
  readonly #idleTimeout: number;
  readonly #sockets = new Set<net.Socket>();
  readonly #guard: ListenerGuard;
  readonly #dialGuard: DialGuard;

  constructor(opts: OutboundOptions) {
    this.#o = opts;
    this.#dialGuard = opts.dialGuard ?? new DialGuard({ view: opts.view });
    const limits = opts.limits ?? LISTENER_DEFAULTS.outbound;
    this.#connectTimeout = opts.connectTimeoutMs ?? limits.connectTimeoutMs;
    this.#idleTimeout = opts.idleTimeoutMs ?? limits.idleTimeoutMs;
    this.#guard = new ListenerGuard('outbound', limits, opts.reporter ?? new ListenerReporter());
    this.server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (sock) => this.#accept(sock));
    const level = opts.accessLogLevel ?? 'info';
    if (level !== 'silent') {
      // One access-log line per connection, when it closes (denied ones too).
      opts.flows.follow((e) => {
        if (e.event !== 'close') return;
        const f = e.flow;
        opts.log[level](
          { access: true, flow: f.id, src: `${f.source.namespace ?? '-'}/${f.source.workload ?? '-'}`, srcAddr: `${f.source.ip}:${f.source.port}`, service: f.destination.service, dst: f.destination.address || f.destination.originalAddress, verdict: f.verdict, reason: f.reason, policy: f.policy, sent: f.bytesSent, received: f.bytesReceived, ms: f.durationMs, close: f.closeReason },
          'connection',
        );
      });
    }
  }

  listen(port: number, host = '::'): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen({ port, host, ipv6Only: false }, () => resolve((this.server.address() as net.AddressInfo).port));
    });
  }

  /** Stops accepting; gives open connections `drainMs` to finish, then cuts them. */
  async close(drainMs = 5_000): Promise<void> {
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    const until = Date.now() + drainMs;
    while (this.#sockets.size > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    for (const s of this.#sockets) s.destroy();
  }

  #accept(client: net.Socket): void {
    this.#sockets.add(client);
    client.once('close', () => this.#sockets.delete(client));
    client.on('error', () => {});
    const o = this.#o;
    const origin = o.originOf(client);
    const sourceIp = normalizeIp(client.remoteAddress ?? '');
    if (!origin) {
      // Not redirected by our data path (or its entry was lost): nowhere to send it.
      const flow = o.flows.open({
        node: o.node,
        source: { ip: sourceIp, port: client.remotePort ?? 0 },
        destination: { address: '', originalAddress: '' },
        verdict: 'error',
        reason: 'no-origin',
        security: 'none',
      });
      o.flows.close(flow, 'no-origin', 0, 0);
      this.#guard.reject('no-origin', { remote: peerAddress(client), detail: 'not redirected by the data path' });
      client.resetAndDestroy();
      return;
    }
    // Per source pod by its netns cookie, the kernel's word: a pod cannot pose as another to spend its share.
    if (!this.#guard.admit(client, `netns:${origin.netnsCookie}`)) return;
    const src = o.workloadOfCookie(origin.netnsCookie);
    const view = o.view();
    const plan = planOutbound(view, origin);
    const original = formatHostPort(origin.ip, origin.port);
    const source = { workload: src?.name, namespace: src?.namespace, identity: src?.identity, ip: sourceIp, port: client.remotePort ?? 0 };
    const labels = connectionLabels({
      reporter: 'source',
      source_workload: src?.name,
      source_namespace: src?.namespace,
      source_principal: src?.identity,
      connection_security_policy: 'none',
    });

    if (plan.kind === 'refuse') {
      const flow = o.flows.open({ node: o.node, source, destination: { address: original, originalAddress: original }, verdict: 'denied', reason: plan.reason, security: 'none' });
      o.metrics.denied.inc({ ...labels, reason: plan.reason, policy: '' });
      o.flows.close(flow, 'denied', 0, 0);
      o.log.debug({ src: source, dst: original, reason: plan.reason }, 'refused');
      client.resetAndDestroy();
      return;
    }

    let service: { name: string; namespace: string } | undefined;
    const family: 4 | 6 = net.isIPv6(origin.ip) && !origin.ip.startsWith('::ffff:') ? 6 : 4;
    const tried = new Set<string>();
    const next = (): Target | undefined => {
      if (plan.kind === 'passthrough') return tried.size ? undefined : { address: plan.ip, port: plan.port };
      if (plan.kind === 'workload') {
        if (tried.size) return undefined;
        const w = plan.workload;
        const address = w.addresses.find((a) => net.isIP(a) === family) ?? w.addresses[0] ?? origin.ip;
        return { address, port: plan.port, workload: w };
      }
      const ep = b!.pick({ sourceIp, sourceNode: o.node }, tried);
      if (!ep) return undefined;
      const e = plan.service.endpoints.find((x) => `${x.namespace}/${x.workload}` === ep.id);
      return {
        address: ep.address,
        port: ep.port,
        endpoint: ep,
        workload: e ? { name: e.workload, namespace: e.namespace, labels: e.labels, identity: e.identity, node: e.node, nodeAddresses: e.nodeAddresses } : undefined,
      };
    };
    // Looked up once per connection; used to pick and to report.
    const b = plan.kind === 'service' ? o.balancers.get(plan.service, plan.targetPort, family) : undefined;
    if (plan.kind === 'service') {
      service = { name: plan.service.name, namespace: plan.service.namespace };
      labels.destination_service = `${plan.service.name}.${plan.service.namespace}`;
      labels.destination_service_namespace = plan.service.namespace;
    }

    const attempt = (): void => {
      const step = planAttempt({
        node: o.node,
        target: next(),
        tried: tried.size,
        source: { identity: src?.identity, namespace: src?.namespace, ip: sourceIp },
        tunnels: o.tunnel !== undefined,
        dialCheck: (a) => this.#dialGuard.check(a),
        policies: o.policies(),
      });
      if (step.kind === 'none') {
        const flow = o.flows.open({
          node: o.node,
          source,
          destination: { service: service?.name, namespace: service?.namespace, address: '', originalAddress: original },
          verdict: 'error',
          reason: step.reason,
          security: 'none',
        });
        o.metrics.denied.inc({ ...labels, reason: flow.reason, policy: '' });
        o.flows.close(flow, flow.reason, 0, 0);
        client.resetAndDestroy();
        return;
      }
      const { target, tunneled } = step;
      tried.add(target.endpoint?.id ?? `${target.address}:${target.port}`);
      const w = target.workload;
      const security = tunneled ? 'mutual_tls' : 'none';
      const dstLabels: ConnectionLabels = {
        ...labels,
        destination_workload: w?.name ?? UNKNOWN,
        destination_namespace: w?.namespace ?? UNKNOWN,
        connection_security_policy: security,
      };
      const address = formatHostPort(target.address, target.port);
      const destination = { service: service?.name, workload: w?.name, namespace: w?.namespace, identity: w?.identity, address, originalAddress: original };
      const deny = (reason: string, policy: string | undefined, flowSecurity: 'none' | 'mutual_tls'): void => {
        const flow = o.flows.open({ node: o.node, source, destination, verdict: 'denied', reason, policy, security: flowSecurity });
        o.metrics.denied.inc({ ...dstLabels, reason, policy: policy ?? '' });
        o.flows.close(flow, 'denied', 0, 0);
        o.log.info({ src: source, dst: address, service: service?.name, reason, policy }, 'connection denied');
        client.resetAndDestroy();
      };
      if (step.kind === 'deny') return deny(step.reason, step.policy, 'none');
      const decision = step.decision;
      if (decision?.audit.length) o.log.info({ src: source, dst: address, audit: decision.audit }, 'audited');

      const started = performance.now();
      const open: Promise<Duplex> = tunneled
        ? o.tunnel!({
            sourceIdentity: src!.identity,
            sourceAddress: sourceIp,
            destination: { identity: w!.identity!, node: w!.node!, nodeAddresses: w!.nodeAddresses ?? [] },
            target: { host: target.address, port: target.port },
          })
        : new Promise((resolve, reject) => {
            const local = w?.node === o.node ? o.localAddress?.(net.isIPv6(target.address) ? 6 : 4) : undefined;
            const sock = net.connect({ host: target.address, port: target.port, allowHalfOpen: true, ...(local ? { localAddress: local } : {}) });
            sock.setNoDelay(true);
            sock.once('error', reject);
            sock.once('connect', () => {
              sock.off('error', reject);
              resolve(sock);
            });
          });
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(Object.assign(new Error('connect timeout'), { code: 'ETIMEDOUT' })), this.#connectTimeout);
      });
      Promise.race([open, timeout]).then(
        (upstream) => {
          clearTimeout(timer);
          if (target.endpoint && b) {
            b.connectResult(target.endpoint.id, true, performance.now() - started);
            b.started(target.endpoint.id);
          }
          const flow = o.flows.open({
            node: o.node,
            source,
            destination,
            verdict: 'allowed',
            reason: decision?.reason ?? (tunneled ? 'allowed-by-destination' : plan.kind === 'passthrough' ? 'passthrough' : 'allowed'),
            policy: decision?.policy,
            security,
          });
          o.metrics.opened.inc(dstLabels);
          o.metrics.active.inc();
          this.#splice(client, upstream, flow, () => {
            if (target.endpoint && b) b.finished(target.endpoint.id);
            o.metrics.active.dec();
            o.metrics.closed.inc(dstLabels);
            o.metrics.sent.inc(dstLabels, client.bytesRead);
            o.metrics.received.inc(dstLabels, client.bytesWritten);
          });
        },
        (err: NodeJS.ErrnoException) => {
          clearTimeout(timer);
          open.then((d) => d.destroy(), () => {}); // a late success after the timeout
          const blame = blameOf(err);
          if (blame === 'refused') {
            const t = err as TunnelError;
            return deny(t.reason || `status-${t.status}`, t.policy, 'mutual_tls');
          }
          if (blame === 'local') {
            // Another endpoint would fail the same way: say why once, blame none of them.
            const flow = o.flows.open({ node: o.node, source, destination, verdict: 'error', reason: 'local-failure', security });
            o.metrics.denied.inc({ ...dstLabels, reason: 'local-failure', policy: '' });
            o.flows.close(flow, `local-failure: ${err.message}`, 0, 0);
            o.log.warn({ src: source, dst: address, err: err.message }, 'cannot connect: this node cannot open the tunnel');
            client.resetAndDestroy();
            return;
          }
          if (target.endpoint) b?.connectResult(target.endpoint.id, false, performance.now() - started);
          o.log.debug({ dst: address, tunneled, blame, err: err.code ?? err.message }, 'connect failed; trying another endpoint');
          attempt();
        },
      );
    };
    attempt();
  }

  /** Pipes both ways (pipe() honours backpressure and forwards half-close) until both sides are done. */
  #splice(client: net.Socket, upstream: Duplex & { setTimeout?(ms: number, cb: () => void): unknown }, flow: Flow, done: () => void): void {
    const o = this.#o;
    let reason = 'closed';
    let closed = 0;
    const onClose = (): void => {
      if (++closed < 2) return;
      done();
      o.flows.close(flow, reason, client.bytesRead, client.bytesWritten);
    };
    const fail = (why: string) => (err?: Error): void => {
      if (reason === 'closed') reason = err ? `${why}: ${(err as NodeJS.ErrnoException).code ?? err.message}` : why;
      client.destroy();
      upstream.destroy();
    };
    client.on('error', fail('client error'));
    upstream.on('error', fail('upstream error'));
    client.setTimeout(this.#idleTimeout, () => fail('idle-timeout')());
    upstream.setTimeout?.(this.#idleTimeout, () => fail('idle-timeout')());
    client.once('close', onClose);
    upstream.once('close', onClose);
    client.pipe(upstream);
    upstream.pipe(client);
    client.resume();
  }
}
