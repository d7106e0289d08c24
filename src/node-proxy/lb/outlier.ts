/**
 * Passive outlier detection shared by every balancer, after Envoy's
 * `consecutive_5xx` detector (for TCP, "5xx" is a failed connect).
 *
 * Choices, and why:
 * - Ejection time is `baseEjectionMs × n`, n the number of times this
 *   endpoint has been ejected, capped at `maxEjectionMs` (Envoy's
 *   base_ejection_time / max_ejection_time). Like Envoy, n is forgiven as the
 *   endpoint stays healthy: one per `baseEjectionMs` spent back in service,
 *   worked out lazily at the next ejection instead of on a timer.
 * - `maxEjectionPercent` is a hard cap over the ready endpoints, as in Envoy
 *   (whose `always_eject_one_host` defaults to false): with the default 50 %
 *   one of two endpoints may go, but a lone endpoint is never ejected,
 *   because ejecting it only turns "may fail" into "will fail". A failure
 *   past the threshold that the cap refuses is tried again on the next
 *   failure (Envoy tries only once, at exactly the threshold).
 * - An endpoint coming back starts with a clean failure count: it needs
 *   `consecutiveFailures` new failures to go again, with a longer time.
 * - Return is checked lazily when the balancer next picks, against `now()`;
 *   nothing here owns a timer.
 */

export interface OutlierOptions {
  /** Connect failures in a row that eject an endpoint. */
  consecutiveFailures?: number;
  /** Ejection time for the first ejection; the n-th lasts n times this. */
  baseEjectionMs?: number;
  /** Upper bound of one ejection. */
  maxEjectionMs?: number;
  /** Most of the ready endpoints that may be ejected at once, 0–100. */
  maxEjectionPercent?: number;
}

export const OUTLIER_DEFAULTS: Readonly<Required<OutlierOptions>> = Object.freeze({
  consecutiveFailures: 5,
  baseEjectionMs: 30_000,
  maxEjectionMs: 300_000,
  maxEjectionPercent: 50,
});

/** What the detector keeps per endpoint (a part of the balancer's endpoint state). */
export interface OutlierState {
  consecutiveFailures: number;
  /** When the ejection ends (on the balancer's clock); undefined while in service. */
  ejectedUntil: number | undefined;
  /** Ejections so far, less those forgiven; multiplies the next ejection time. */
  ejections: number;
  /** When the endpoint last came back from an ejection. */
  returnedAt: number;
}

export function initialOutlierState(): OutlierState {
  return { consecutiveFailures: 0, ejectedUntil: undefined, ejections: 0, returnedAt: 0 };
}

export class OutlierDetector {
  readonly options: Readonly<Required<OutlierOptions>>;
  readonly #maxMultiplier: number;

  constructor(options: OutlierOptions = {}) {
    this.options = Object.freeze({ ...OUTLIER_DEFAULTS, ...stripUndefined(options) });
    // Past this the time no longer grows; a higher count would only slow forgiveness.
    this.#maxMultiplier = Math.max(1, Math.ceil(this.options.maxEjectionMs / Math.max(1, this.options.baseEjectionMs)));
  }

  /**
   * Records one connect result. Returns true when it ejects the endpoint;
   * `ejectedReady` and `ready` count the ready endpoints now ejected and in
   * all, for the percent cap.
   */
  record(s: OutlierState, ok: boolean, now: number, ejectedReady: number, ready: number): boolean {
    if (ok) {
      s.consecutiveFailures = 0;
      return false;
    }
    s.consecutiveFailures++;
    // Results of connects begun before the ejection change nothing more.
    if (s.ejectedUntil !== undefined || s.consecutiveFailures < this.options.consecutiveFailures) return false;
    if ((ejectedReady + 1) * 100 > this.options.maxEjectionPercent * ready) return false;
    const o = this.options;
    if (s.ejections > 0) {
      s.ejections = Math.max(0, s.ejections - Math.floor((now - s.returnedAt) / Math.max(1, o.baseEjectionMs)));
    }
    s.ejections = Math.min(s.ejections + 1, this.#maxMultiplier);
    s.ejectedUntil = now + Math.min(o.baseEjectionMs * s.ejections, o.maxEjectionMs);
    return true;
  }

  /** Brings the endpoint back if its time is up; true when it did. */
  returnIfDue(s: OutlierState, now: number): boolean {
    if (s.ejectedUntil === undefined || now < s.ejectedUntil) return false;
    s.ejectedUntil = undefined;
    s.consecutiveFailures = 0;
    s.returnedAt = now;
    return true;
  }
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
