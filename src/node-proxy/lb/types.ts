/**
 * The balancer's interfaces, at the bottom of lb/: balancers, pickers and the
 * registry import these and nothing imports upward, so no file of lb/ sits in
 * a circle of imports.
 */
import type { LoadBalancerPolicy } from '../../api/kinds';
import type { EwmaOptions, EwmaState } from './ewma';
import type { OutlierOptions, OutlierState } from './outlier';

export interface Endpoint {
  /** Stable across updates: workload ns/name, or ip:port. */
  id: string;
  address: string;
  port: number;
  node: string;
  ready: boolean;
}

export interface PickContext {
  sourceIp: string;
  sourceNode: string;
  /** What CONSISTENT_HASH hashes (a header value, say); the source IP when absent. */
  hashKey?: string;
}

export interface BalancerStats {
  id: string;
  active: number;
  /** The latency estimate now, ms. */
  ewmaMs: number;
  ejected: boolean;
  /** When the ejection ends, on the balancer's clock. */
  ejectedUntil?: number | undefined;
  consecutiveFailures: number;
}

export interface Balancer {
  /** Replaces the endpoint set (keeps state of endpoints that stay, by id). */
  update(endpoints: readonly Endpoint[]): void;
  /** An endpoint to connect to, skipping `exclude` (ids already tried), or undefined when none is usable. */
  pick(ctx: PickContext, exclude?: ReadonlySet<string>): Endpoint | undefined;
  /** A connection to `id` opened (active count +1). */
  started(id: string): void;
  /** It closed (active count −1). */
  finished(id: string): void;
  /** A connect attempt's outcome, with its latency: drives the EWMA and outlier detection. */
  connectResult(id: string, ok: boolean, latencyMs: number): void;
  /** Debug view, per endpoint in update order. */
  stats(): BalancerStats[];
}

/** The Service spec's `loadBalancer.policy` values. */
export type BalancerPolicy = LoadBalancerPolicy;

export interface BalancerOptions {
  /** This proxy's node: endpoints there are preferred while one is usable. */
  localNode?: string;
  /** In [0, 1); Math.random by default. */
  random?: () => number;
  /** Milliseconds on a monotonic clock; performance.now by default. */
  now?: () => number;
  outlier?: OutlierOptions;
  ewma?: EwmaOptions;
}

export type BalancerFactory = (opts: BalancerOptions) => Balancer;

export interface EndpointState extends OutlierState, EwmaState {
  readonly id: string;
  /** The latest version pushed for this id. */
  endpoint: Endpoint;
  /** On the proxy's own node. */
  local: boolean;
  /** Ready and not ejected. */
  usable: boolean;
  /** Connections open now. */
  active: number;
}

/** A policy's choice among candidates. */
export interface Picker {
  /** The endpoint set changed; `states` are all of them, in update order. */
  rebuild?(states: readonly EndpointState[]): void;
  /**
   * One of `list` whose id is not in `exclude`. `eligible` (≥ 1) counts
   * those; `local` says `list` is the local tier.
   */
  choose(
    list: readonly EndpointState[],
    eligible: number,
    local: boolean,
    ctx: PickContext,
    exclude: ReadonlySet<string> | undefined,
  ): EndpointState | undefined;
}

