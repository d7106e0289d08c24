/** Randomness the pickers share. */

/** An integer in [0, n), n ≥ 1, even from a `random` that returns 1. */
export function randomIndex(random: () => number, n: number): number {
  const i = Math.floor(random() * n);
  return i < n ? (i >= 0 ? i : 0) : n - 1;
}
