/** Output helpers shared by the subcommands. */
import { UsageError } from './command';

/** JSON with bigints as decimal strings (cookies, ids, counters). */
export function toJson(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), 2) + '\n';
}

/** A plain text table: columns padded to their widest cell. */
export function table(headers: string[], rows: (string | number | bigint)[][]): string {
  const cells = [headers, ...rows.map((r) => r.map(String))];
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  return cells.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n') + '\n';
}

export type OutputFormat = 'text' | 'json';

export function outputFormat(cmd: string, value: unknown): OutputFormat {
  if (value === 'text' || value === 'json') return value;
  throw new UsageError(`${cmd}: --output must be text or json, not ${String(value)}`);
}

/** Parses an integer flag within bounds, naming the flag when it is wrong. */
export function intFlag(cmd: string, flag: string, value: unknown, min: number, max: number): number {
  const n = Number(value);
  if (typeof value !== 'string' || !/^\d+$/.test(value) || n < min || n > max)
    throw new UsageError(`${cmd}: --${flag} must be an integer from ${min} to ${max}, not ${String(value)}`);
  return n;
}

export function requiredFlag(cmd: string, flag: string, value: unknown): string {
  if (typeof value !== 'string' || value === '') throw new UsageError(`${cmd}: --${flag} is required`);
  return value;
}
