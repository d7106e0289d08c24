/**
 * Peak-EWMA latency estimates, as Linkerd keeps them (tower's `PeakEwma`):
 * the math alone, shared by the P2C picker and the endpoint state every
 * balancer keeps.
 */

export interface EwmaOptions {
  /**
   * The estimate a new endpoint starts with. 1 ms is about one in-cluster
   * connect between nodes (TCP plus the node-to-node TLS handshake) and
   * errs low on purpose: a start that is too low is corrected by the first
   * result (a higher sample replaces the estimate at once), while one that
   * is too high would starve the endpoint, which only wins comparisons it
   * is cheaper in, until the estimate decays (about `decayMs`).
   */
  defaultRttMs?: number;
  /** Time constant of the decay, as Linkerd's 10 s. */
  decayMs?: number;
}

export const EWMA_DEFAULTS: Readonly<Required<EwmaOptions>> = Object.freeze({
  defaultRttMs: 1,
  decayMs: 10_000,
});

/**
 * Costs never reach zero, so that the active count still separates endpoints
 * whose latency rounds to nothing (1 µs).
 */
const MIN_ESTIMATE_MS = 0.001;

/** Per-endpoint latency estimate (part of the balancer's endpoint state). */
export interface EwmaState {
  /** Estimate as of `ewmaAt`, ms. */
  ewmaMs: number;
  /** When the estimate was last fed a sample (on the balancer's clock). */
  ewmaAt: number;
}

/**
 * Feeds one sample. A sample above the estimate replaces it at once (peak
 * sensitivity: a slowing endpoint is avoided from its first slow connect);
 * one below moves the estimate toward it by the weight time has earned
 * since the last sample, so a burst of fast results in one instant does not
 * wipe out a slow one.
 */
export function observeLatency(s: EwmaState, sampleMs: number, now: number, decayMs: number): void {
  if (!(sampleMs >= 0)) return;
  if (sampleMs > s.ewmaMs) {
    s.ewmaMs = sampleMs;
  } else {
    const elapsed = now - s.ewmaAt;
    const keep = elapsed > 0 ? Math.exp(-elapsed / decayMs) : 1;
    s.ewmaMs = s.ewmaMs * keep + sampleMs * (1 - keep);
  }
  s.ewmaAt = now;
}

/**
 * A failed connect only ever raises the estimate (a timeout is slow); a fast
 * refusal must not make a broken endpoint look cheap. Outlier detection
 * deals with the failure itself.
 */
export function observeFailure(s: EwmaState, latencyMs: number, now: number): void {
  if (latencyMs > s.ewmaMs) {
    s.ewmaMs = latencyMs;
    s.ewmaAt = now;
  }
}

/**
 * The estimate now: as tower does, it decays toward zero while no sample
 * arrives, so an endpoint once seen slow is tried again after a while
 * instead of losing every comparison forever.
 */
export function currentLatency(s: EwmaState, now: number, decayMs: number): number {
  const elapsed = now - s.ewmaAt;
  const v = elapsed > 0 ? s.ewmaMs * Math.exp(-elapsed / decayMs) : s.ewmaMs;
  return v > MIN_ESTIMATE_MS ? v : MIN_ESTIMATE_MS;
}

