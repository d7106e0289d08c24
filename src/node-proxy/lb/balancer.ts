/**
 * Per-connection load balancing: the interface, and balancers registered by
 * policy name (grpc-js `registerLoadBalancerType`). Pure: no sockets, no
 * timers; the caller reports what happened through started(), finished()
 * and connectResult(), and the clock and randomness can be injected.
 */
import { performance } from 'node:perf_hooks';

import type { LoadBalancerPolicy } from '../../api/kinds';
import { MeshError } from '../../errors';
import { ConsistentHashPicker } from './consistent-hash';
import { LeastRequestPicker } from './least-request';
import { LocalityBalancer } from './locality';
import type { OutlierOptions } from './outlier';
import { EWMA_DEFAULTS, P2cEwmaPicker, type EwmaOptions } from './p2c-ewma';
import { RoundRobinPicker } from './round-robin';

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

const registry = new Map<string, BalancerFactory>();

/** Makes `policy` available to createBalancer(); a later registration replaces an earlier one. */
export function registerBalancer(policy: string, make: BalancerFactory): void {
  registry.set(policy, make);
}

export function registeredPolicies(): string[] {
  return [...registry.keys()];
}

export function createBalancer(policy: BalancerPolicy, opts: BalancerOptions = {}): Balancer {
  const make = registry.get(policy);
  if (make === undefined) {
    throw new MeshError(
      'NM_ERR_LB_UNKNOWN_POLICY',
      `load balancer policy "${policy}" is not registered (known: ${registeredPolicies().join(', ')}); ` +
        'use one of those in the Service spec or registerBalancer() it first',
    );
  }
  return make(opts);
}

registerBalancer('P2C_EWMA', (o) => {
  const random = o.random ?? Math.random;
  // The balancer and its picker must read the same clock.
  const now = o.now ?? (() => performance.now());
  const picker = new P2cEwmaPicker(random, now, o.ewma?.decayMs ?? EWMA_DEFAULTS.decayMs);
  return new LocalityBalancer(picker, { ...o, now });
});
registerBalancer('ROUND_ROBIN', (o) => new LocalityBalancer(new RoundRobinPicker(o.random ?? Math.random), o));
registerBalancer('LEAST_REQUEST', (o) => new LocalityBalancer(new LeastRequestPicker(o.random ?? Math.random), o));
registerBalancer('CONSISTENT_HASH', (o) => new LocalityBalancer(new ConsistentHashPicker(), o));
