/**
 * The outbound listener (15001): every TCP connection a pod opened, sent here
 * by the data path. Per connection: the origin from the kernel, the source
 * workload from its netns cookie (never from the source IP), a plan from the
 * config, an endpoint from the balancer, an authorization decision, then a
 * connection to the endpoint and bytes piped both ways with backpressure and
 * half-close. Config changes apply to new connections; established ones keep
 * going.
 *
 * What each attempt does is planned without I/O (./planner); the connect is
 * the shared upstream connector's (../upstream), which also tells the
 * balancer what the attempt said about its endpoint; the flow, counters and
 * access-log line are the recorder's (../flows/recorder). This file decides
 * the order: target, plan, connect, then the next endpoint or the refusal.
 */
import * as net from 'node:net';
import type { Duplex } from 'node:stream';

import { formatHostPort } from '../../api/address';
import type { Logger } from '../../log';
import type { Origin } from '../datapath';
import type { FastPair, FastPath } from '../datapath/fastpath';
import type { ConnectionFacts, ConnectionRecorder, OpenConnection } from '../flows';
import { LISTENER_DEFAULTS, ListenerGuard, ListenerReporter, peerAddress, type ListenerLimits } from '../listeners';
import { connectionLabels, type ConnectionLabels } from '../metrics';
import type { CompiledPolicySet, ConnectionFacts as PolicyFacts } from '../policy';
import type { MeshView, WorkloadView } from '../state';
import { normalizeIp } from '../state';
import { blameOf, type Target, type UpstreamConnector } from '../upstream';
import type { TunnelError } from '../tunnel';
import type { Balancer } from '../lb';
import type { BalancerCache } from './balancers';
import { DialGuard } from './dial-guard';
import { planOutbound } from './plan';
import { planAttempt } from './planner';
import { Splice, type Upstream } from './splice';

export interface OutboundOptions {
  node: string;
  /** The origin of an accepted socket (the data path), taken once. */
  originOf(socket: net.Socket): Origin | undefined;
  /** The local workload a netns cookie belongs to. */
  workloadOfCookie(cookie: bigint): WorkloadView | undefined;
  view(): MeshView;
  policies(): CompiledPolicySet;
  balancers: BalancerCache;
  /** Where each connection's flow, counters and access-log line are written. */
  recorder: ConnectionRecorder;
  /**
   * Opens each attempt's upstream: a mutual-TLS tunnel to another node's
   * proxy for a workload there (see docs/architecture.md, 'One connection, end
   * to end'), or a TCP connection, within its connect timeout.
   */
  upstream: UpstreamConnector;
  log: Logger;
  idleTimeoutMs?: number;
  /**
   * Refuses addresses the proxy must never dial for a pod (its own, loopback,
   * unspecified, link-local), whatever outboundTrafficPolicy says. Default: a
   * guard over this namespace's interface addresses.
   */
  dialGuard?: DialGuard;
  /** Connections in total and per source pod (default LISTENER_DEFAULTS.outbound). */
  limits?: ListenerLimits['outbound'];
  reporter?: ListenerReporter;
  /**
   * The same-node fast path (../datapath/fastpath), when the kernel has it:
   * an authorized plaintext connection to a pod of this node is copied by the
   * kernel while MeshConfig `sameNodeFastPath` is on.
   */
  fastPath?: FastPath;
}

const UNKNOWN = 'unknown';
const ignore = (): void => {};

export class OutboundServer {
  readonly server: net.Server;
  readonly #o: OutboundOptions;
  readonly #idleTimeout: number;
  readonly #sockets = new Set<net.Socket>();
  /** Each spliced client's upstream, so close() cuts both sides (a destroyed client alone leaves its tunnel stream open). */
  readonly #upstreams = new Map<net.Socket, Duplex>();
  readonly #guard: ListenerGuard;
  readonly #dialGuard: DialGuard;
  /** Straight connections this proxy authorized, with what it decided on: recheck() asks again when policies change. */
  readonly #authorized = new Map<Splice, PolicyFacts>();

  constructor(opts: OutboundOptions) {
    this.#o = opts;
    this.#dialGuard = opts.dialGuard ?? new DialGuard({ view: opts.view });
    const limits = opts.limits ?? LISTENER_DEFAULTS.outbound;
    this.#idleTimeout = opts.idleTimeoutMs ?? limits.idleTimeoutMs;
    this.#guard = new ListenerGuard('outbound', limits, opts.reporter ?? new ListenerReporter());
    // noDelay: a pod's small write (a request, a reply) goes on at once, not after the ACK of the one before (Nagle).
    this.server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true }, (sock) => this.#accept(sock));
  }

  listen(port: number, host = '::'): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      // reusePort: an upgrade's new process listens beside this one (docs/architecture.md, 'Upgrades that drop nothing').
      this.server.listen({ port, host, ipv6Only: false, reusePort: true }, () => resolve((this.server.address() as net.AddressInfo).port));
    });
  }

  /**
   * Stops accepting at once; gives open connections `drainMs` to finish, then
   * cuts them. Resolves with how many were cut. (server.close()'s callback
   * waits for the last connection, so it bounds nothing: it is not awaited
   * before the deadline.)
   */
  async close(drainMs = 5_000): Promise<number> {
    const stopped = new Promise<void>((resolve) => this.server.close(() => resolve()));
    const until = Date.now() + drainMs;
    while (this.#sockets.size > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    const cut = this.#sockets.size;
    for (const s of this.#sockets) {
      s.destroy();
      this.#upstreams.get(s)?.destroy();
    }
    await stopped;
    return cut;
  }

  /**
   * Its own function (as #splice is): a listener made in #accept would keep
   * that call's whole scope for as long as the connection is open.
   */
  #track(client: net.Socket): void {
    this.#sockets.add(client);
    client.once('close', () => this.#sockets.delete(client));
    client.on('error', ignore);
  }

  #accept(client: net.Socket): void {
    this.#track(client);
    const o = this.#o;
    const rec = o.recorder;
    const origin = o.originOf(client);
    const sourceIp = normalizeIp(client.remoteAddress ?? '');
    if (!origin) {
      // Not redirected by our data path (or its entry was lost): nowhere to send it.
      rec.refused(
        // Counted by the listener guard's no-origin rejection below, not as a denial.
        { source: { ip: sourceIp, port: client.remotePort ?? 0 }, destination: { address: '', originalAddress: '' }, security: 'none' },
        { verdict: 'error', reason: 'no-origin' },
      );
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
      rec.refused({ source, destination: { address: original, originalAddress: original }, security: 'none', labels }, { verdict: 'denied', reason: plan.reason });
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
      const policies = o.policies();
      const step = planAttempt({
        node: o.node,
        target: next(),
        tried: tried.size,
        source: { identity: src?.identity, namespace: src?.namespace, ip: sourceIp },
        tunnels: o.upstream.tunnels,
        dialCheck: (a) => this.#dialGuard.check(a),
        policies,
      });
      if (step.kind === 'none') {
        const destination = { service: service?.name, namespace: service?.namespace, address: '', originalAddress: original };
        rec.refused({ source, destination, security: 'none', labels }, { verdict: 'error', reason: step.reason });
        client.resetAndDestroy();
        return;
      }
      const { target, tunneled } = step;
      tried.add(target.endpoint?.id ?? `${target.address}:${target.port}`);
      const w = target.workload;
      const dstLabels: ConnectionLabels = {
        ...labels,
        destination_workload: w?.name ?? UNKNOWN,
        destination_namespace: w?.namespace ?? UNKNOWN,
        connection_security_policy: tunneled ? 'mutual_tls' : 'none',
      };
      const address = formatHostPort(target.address, target.port);
      const facts: ConnectionFacts = {
        source,
        destination: { service: service?.name, workload: w?.name, namespace: w?.namespace, identity: w?.identity, address, originalAddress: original },
        security: tunneled ? 'mutual_tls' : 'none',
        labels: dstLabels,
      };
      const deny = (reason: string, policy: string | undefined, security: 'none' | 'mutual_tls'): void => {
        rec.refused({ ...facts, security }, { verdict: 'denied', reason, ...(policy ? { policy } : {}) });
        o.log.info({ src: source, dst: address, service: service?.name, reason, policy }, 'connection denied');
        client.resetAndDestroy();
      };
      if (step.kind === 'deny') return deny(step.reason, step.policy, 'none');
      const decision = step.decision;
      if (decision?.audit.length) o.log.info({ src: source, dst: address, audit: decision.audit }, 'audited');

      o.upstream.connect({ target, tunneled, source: { identity: src?.identity, ip: sourceIp } }, b).then(
        (upstream) => {
          // Policies that changed while it connected were not asked about it (recheck() knows only spliced ones): ask now.
          const late = step.input && o.policies() !== policies ? o.policies().evaluate(step.input) : undefined;
          if (late && !late.allowed) {
            upstream.destroy();
            return deny(late.reason, late.policy, 'none');
          }
          const conn = rec.opened(facts, {
            reason: decision?.reason ?? (tunneled ? 'allowed-by-destination' : plan.kind === 'passthrough' ? 'passthrough' : 'allowed'),
            ...(decision?.policy ? { policy: decision.policy } : {}),
          });
          if (client.destroyed) {
            // The pod gave up (or a drain cut it) while we connected: its 'close' has been and gone, so nothing would end the flow or the upstream.
            upstream.destroy();
            conn.close('client closed before the upstream connected', client.bytesRead, 0);
            return;
          }
          const picked = target.endpoint && b ? { balancer: b, id: target.endpoint.id } : undefined;
          picked?.balancer.started(picked.id);
          // A pod of this node, straight (no tunnel): the kernel may copy it (docs/architecture.md, 'The same-node fast path').
          const fast =
            !tunneled && w?.node === o.node && o.fastPath && o.view().mesh.sameNodeFastPath && 'remoteAddress' in upstream
              ? o.fastPath.join(client, upstream as net.Socket)
              : undefined;
          this.#splice(client, upstream, conn, picked, typeof fast === 'object' ? fast : undefined, step.input);
        },
        (err: NodeJS.ErrnoException) => {
          const blame = blameOf(err);
          if (blame === 'refused') {
            const t = err as unknown as TunnelError;
            return deny(t.reason || `status-${t.status}`, t.policy, 'mutual_tls');
          }
          if (blame === 'local') {
            // Another endpoint would fail the same way: say why once, blame none of them.
            rec.refused(facts, { verdict: 'error', reason: 'local-failure', closeReason: `local-failure: ${err.message}` });
            o.log.warn({ src: source, dst: address, err: err.message }, 'cannot connect: this node cannot open the tunnel');
            client.resetAndDestroy();
            return;
          }
          if (blame === 'tunnel' && plan.kind === 'service' && w?.node !== undefined && w.identity !== undefined) {
            // Its siblings behind the same tunnel (that node, that identity) would fail the same way, each after its own wait:
            // skip them for this connection. Only the endpoint tried is blamed; the others are ejected by their own failures.
            for (const e of plan.service.endpoints) if (e.node === w.node && e.identity === w.identity) tried.add(`${e.namespace}/${e.workload}`);
          }
          o.log.debug({ dst: address, tunneled, blame, err: err.code ?? err.message }, 'connect failed; trying another endpoint');
          attempt();
        },
      );
    };
    attempt();
  }

  /**
   * Both ways until both sides are done (./splice: backpressure, half-close,
   * errors, the idle timeout); then the balancer hears the endpoint it picked
   * is done. Called with values, not a callback: one made in #accept would
   * keep that connection's whole planning scope (the plan, the retry state,
   * every closure of the attempt) for as long as the connection is open.
   * `input` is what the policies decided it on, kept for recheck().
   */
  #splice(
    client: net.Socket,
    upstream: Upstream,
    conn: OpenConnection,
    picked: { balancer: Balancer; id: string } | undefined,
    fast: FastPair | undefined,
    input: PolicyFacts | undefined,
  ): void {
    this.#upstreams.set(client, upstream);
    const splice = new Splice(
      client,
      upstream,
      this.#idleTimeout,
      (reason) => {
        this.#upstreams.delete(client);
        this.#authorized.delete(splice);
        picked?.balancer.finished(picked.id);
        // What the kernel copied never passed through the process's counters.
        const k = fast?.leave();
        conn.close(reason, client.bytesRead + (k?.aToB ?? 0), client.bytesWritten + (k?.bToA ?? 0));
      },
      fast,
    );
    if (input) this.#authorized.set(splice, input);
  }

  /**
   * Asks the policies again for every open connection this proxy authorized
   * (straight ones: a tunnel's destination proxy decides its own) and cuts
   * those they now deny, as ztunnel does, whether the proxy or the kernel
   * copies their bytes. Their flows close with the reason and the policy.
   * Returns how many were cut.
   */
  recheck(policies: CompiledPolicySet): number {
    let cut = 0;
    for (const [splice, input] of this.#authorized) {
      const d = policies.evaluate(input);
      if (d.allowed) continue;
      this.#authorized.delete(splice);
      splice.cut(`denied: ${d.reason}${d.policy ? ` by ${d.policy}` : ''} (policy changed while connected)`);
      cut++;
    }
    return cut;
  }
}
