/**
 * The one way the proxy opens a connection to where a pod's traffic goes
 * (see docs/architecture.md, 'One connection, end to end'): through a
 * mutual-TLS tunnel to the destination node's proxy, or straight over TCP,
 * within the connect timeout. A pod of this node is dialled from its client's
 * own address where the pod's netns allows it (./delivery), else from the
 * proxy's address (STRICT pods accept new connections only from the proxy,
 * either way). The L4 listener uses it per attempt; the L7 layer uses it for its
 * upstream connections; the tunnel's destination side dials this node's pods
 * with dialLocal().
 *
 * What an attempt's outcome says about the endpoint is decided here too, once:
 * only an endpoint's own failure (a refused or timed-out connect, a tunnel that
 * broke) feeds its balancer; a local failure (no certificate for the source)
 * or a destination's refusal does not.
 */
import * as net from 'node:net';
import type { Duplex } from 'node:stream';

import type { Balancer, Endpoint } from '../lb';
import { TunnelError } from '../tunnel';

/** Where one attempt goes: an endpoint of a service, a workload, or a passthrough address. */
export interface Target {
  address: string;
  port: number;
  endpoint?: Endpoint;
  workload?: { name: string; namespace: string; labels: Record<string, string>; identity?: string; node?: string; nodeAddresses?: readonly string[] };
}

/** What a tunnel to another node's proxy is opened with. */
export interface TunnelRequest {
  sourceIdentity: string;
  /** The pod's address as it dialled (the accepted socket's peer): the destination evaluates source.ip and ipBlocks with it. */
  sourceAddress: string;
  destination: { identity: string; node: string; nodeAddresses: readonly string[] };
  target: { host: string; port: number };
}

export interface UpstreamOptions {
  /** This proxy's node: a target on it is a local pod. */
  node: string;
  /** Connect attempts that take longer fail with ETIMEDOUT (blamed on the endpoint). */
  connectTimeoutMs: number;
  /**
   * Opens a tunnel stream to another node's proxy. Without it, every
   * destination is dialled directly. Rejects with a TunnelError, whose blame
   * says whose fault it was.
   */
  tunnel?(req: TunnelRequest): Promise<Duplex>;
  /** The address to deliver to this node's own pods from, per family, when `deliver` gives no socket. */
  localAddress?(family: 4 | 6): string | undefined;
  /** A socket toward pod `host` of this node bound to the client's address `source`, not connected; undefined: from localAddress. */
  deliver?(host: string, source: string | undefined): net.Socket | undefined;
}

export interface UpstreamAttempt {
  target: Target;
  /** Through a tunnel (the planner decided: a workload on another node with an identity). */
  tunneled: boolean;
  /** The source pod: its identity (required for a tunnel) and address. */
  source: { identity?: string; ip: string };
}

export type Blame = 'local' | 'tunnel' | 'endpoint' | 'refused';

/**
 * Whose fault a failed connect is: a TunnelError says (local, tunnel,
 * endpoint, or refused: the destination's decision); a direct connect that
 * fails is the endpoint's.
 */
export function blameOf(err: unknown): Blame {
  return err instanceof TunnelError ? err.blame : 'endpoint';
}

export class UpstreamConnector {
  readonly #o: UpstreamOptions;

  constructor(opts: UpstreamOptions) {
    this.#o = opts;
  }

  /** Whether this connector opens tunnels (the planner needs to know). */
  get tunnels(): boolean {
    return this.#o.tunnel !== undefined;
  }

  /**
   * Opens the attempt's upstream within the connect timeout. When the target
   * is a balancer's endpoint, reports the outcome to `balancer` (success with
   * its latency; failure only when the endpoint or its tunnel is to blame).
   * Rejects with the error; blameOf() classifies it.
   */
  connect(a: UpstreamAttempt, balancer?: Balancer): Promise<Duplex> {
    const started = performance.now();
    const open = a.tunneled ? this.#tunnel(a) : this.#direct(a.target.address, a.target.port, a.target.workload?.node === this.#o.node, a.source.ip);
    let timer: NodeJS.Timeout | undefined;
    const ms = this.#o.connectTimeoutMs;
    const timeout = new Promise<never>((_, reject) => {
      // A tunnel that does not come up in time is the tunnel's failure (its siblings on that node would wait the same); a TCP connect's is the endpoint's.
      timer = setTimeout(
        () =>
          reject(
            a.tunneled
              ? new TunnelError('NM_ERR_TUNNEL_TIMEOUT', `no tunnel to node ${a.target.workload?.node} within the connect timeout (${ms} ms)`)
              : Object.assign(new Error(`connect timeout after ${ms} ms`), { code: 'ETIMEDOUT' }),
          ),
        ms,
      );
    });
    const id = a.target.endpoint?.id;
    return Promise.race([open, timeout]).then(
      (upstream) => {
        clearTimeout(timer);
        if (id !== undefined) balancer?.connectResult(id, true, performance.now() - started);
        return upstream;
      },
      (err: unknown) => {
        clearTimeout(timer);
        open.then((d) => d.destroy(), () => {}); // a late success after the timeout
        const blame = blameOf(err);
        if (id !== undefined && (blame === 'endpoint' || blame === 'tunnel')) balancer?.connectResult(id, false, performance.now() - started);
        throw err;
      },
    );
  }

  /**
   * A TCP connection to a pod of this node, from the client's address
   * `source` (or the proxy's), not yet connected: the tunnel's destination
   * side answers 502/504 from its events.
   */
  dialLocal(target: { host: string; port: number }, source?: string): net.Socket {
    return this.#socket(target.host, target.port, true, source);
  }

  #tunnel(a: UpstreamAttempt): Promise<Duplex> {
    const w = a.target.workload;
    if (!this.#o.tunnel || !a.source.identity || !w?.identity || !w.node) {
      // The planner tunnels only with all of these; a caller that did not ask it is this node's bug.
      return Promise.reject(new TunnelError('NM_ERR_TUNNEL_LOCAL', `cannot tunnel to ${a.target.address}:${a.target.port}: ${!this.#o.tunnel ? 'this proxy opens no tunnels' : 'no source or destination identity'}`));
    }
    return this.#o.tunnel({
      sourceIdentity: a.source.identity,
      sourceAddress: a.source.ip,
      destination: { identity: w.identity, node: w.node, nodeAddresses: w.nodeAddresses ?? [] },
      target: { host: a.target.address, port: a.target.port },
    });
  }

  #direct(host: string, port: number, local: boolean, source: string): Promise<Duplex> {
    return new Promise((resolve, reject) => {
      const sock = this.#socket(host, port, local, source);
      sock.once('error', reject);
      sock.once('connect', () => {
        sock.off('error', reject);
        resolve(sock);
      });
    });
  }

  #socket(host: string, port: number, local: boolean, source?: string): net.Socket {
    const transparent = local ? this.#o.deliver?.(host, source) : undefined;
    if (transparent) return transparent.setNoDelay(true).connect({ host, port });
    const from = local ? this.#o.localAddress?.(net.isIPv6(host) ? 6 : 4) : undefined;
    // allowHalfOpen: the destination's FIN must not also end the pod's direction.
    return net.connect({ host, port, allowHalfOpen: true, noDelay: true, ...(from ? { localAddress: from } : {}) });
  }
}
