/**
 * Per-connection load balancing: balancers registered by policy name (grpc-js `registerLoadBalancerType`). Pure: no sockets, no
 * timers; the caller reports what happened through started(), finished()
 * and connectResult(), and the clock and randomness can be injected.
 */
import { performance } from 'node:perf_hooks';

import { MeshError } from '../../errors';
import { ConsistentHashPicker } from './consistent-hash';
import { EWMA_DEFAULTS } from './ewma';
import { LeastRequestPicker } from './least-request';
import { LocalityBalancer } from './locality';
import { P2cEwmaPicker } from './p2c-ewma';
import { RoundRobinPicker } from './round-robin';
import type { Balancer, BalancerFactory, BalancerOptions, BalancerPolicy } from './types';

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
