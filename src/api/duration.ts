/**
 * Gateway API durations (`1h30m`, `500ms`), on their own: the node proxy
 * parses its flags with them and must not load what validates resources
 * (ajv, yaml and the schemas: about 5 MB of a proxy's RSS).
 */
export const DURATION_RE = /^([0-9]{1,5}(h|m|s|ms)){1,4}$/;

/** Milliseconds in a Gateway API duration (`1h30m`, `500ms`); undefined when malformed. */
export function parseDurationMs(text: string): number | undefined {
  if (!DURATION_RE.test(text)) return undefined;
  const unit: Record<string, number> = { h: 3_600_000, m: 60_000, s: 1000, ms: 1 };
  let ms = 0;
  for (const m of text.matchAll(/([0-9]+)(ms|h|m|s)/g)) ms += Number(m[1]) * unit[m[2]!]!;
  return ms;
}
