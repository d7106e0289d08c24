/**
 * The shape of a `nodemesh` subcommand and the parsing every one shares:
 * flags are validated once here (unknown flags and missing values are
 * errors naming the flag), and every subcommand answers --help.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';

import { MeshError } from '../errors';

export type Options = NonNullable<ParseArgsConfig['options']>;

export interface Io {
  out: (s: string) => void;
  err: (s: string) => void;
}

export interface Command<O extends Options = Options> {
  name: string;
  summary: string;
  /** Usage after `nodemesh `, in full (`lab up [--name lab]`). */
  usage: string;
  /** Longer description for --help. */
  description?: string;
  options: O;
  /** Help text per option, by option name. */
  optionHelp: Partial<Record<keyof O, string>>;
  allowPositionals?: boolean;
  /** Subcommands (`nodemesh lab up`): when set, the first positional picks one. */
  subcommands?: Command[];
  run?(values: Record<string, unknown>, positionals: string[], io: Io): Promise<number>;
}

/** Exit codes shared by every subcommand. */
export const EXIT = { ok: 0, rejected: 1, unreachable: 2, usage: 64 } as const;

export class UsageError extends MeshError {
  constructor(message: string) {
    super('NM_ERR_USAGE', message);
  }
}

function join(...parts: string[]): string {
  return parts.filter((p) => p !== '').join(' ');
}

export function defineCommand<O extends Options>(c: Command<O>): Command {
  return c as unknown as Command;
}

export function helpText(c: Command, prefix = 'nodemesh'): string {
  const lines = [`${c.summary}`, '', `Usage: nodemesh ${c.usage}`];
  if (c.description) lines.push('', c.description);
  if (c.subcommands?.length) {
    lines.push('', 'Commands:');
    const w = Math.max(...c.subcommands.map((s) => s.name.length));
    for (const s of c.subcommands) lines.push(`  ${s.name.padEnd(w)}  ${s.summary}`);
    lines.push('', `Run \`${join(prefix, c.name, '<command>')} --help\` for a command's flags.`);
  }
  const opts = Object.entries(c.options);
  lines.push('', 'Flags:');
  const rows = opts.map(([name, o]) => {
    const flag = `${o.short ? `-${o.short}, ` : '    '}--${name}${o.type === 'string' ? ' VALUE' : ''}`;
    const dflt = o.default !== undefined ? ` (default ${JSON.stringify(o.default)})` : '';
    return [flag, `${(c.optionHelp as Record<string, string | undefined>)[name] ?? ''}${dflt}`] as const;
  });
  rows.push(['-h, --help', 'show this help']);
  const w = Math.max(...rows.map((r) => r[0].length));
  for (const [f, h] of rows) lines.push(`  ${f.padEnd(w)}  ${h}`);
  return lines.join('\n') + '\n';
}

/** Parses argv for `c` (and its subcommands) and runs it. */
export async function dispatch(c: Command, argv: string[], io: Io, prefix = 'nodemesh'): Promise<number> {
  if (c.subcommands?.length) {
    const [first, ...rest] = argv;
    const sub = c.subcommands.find((s) => s.name === first);
    if (sub) return dispatch(sub, rest, io, join(prefix, c.name));
    // A command that also runs by itself (nodemesh controller) parses its own flags.
    if (!c.run) {
      if (first === undefined || first === '-h' || first === '--help' || first === 'help') {
        io.out(helpText(c, prefix));
        return first === undefined ? EXIT.usage : EXIT.ok;
      }
      throw new UsageError(`unknown command "${join(prefix, c.name, first)}": see \`${join(prefix, c.name)} --help\``);
    }
  }
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      options: { ...c.options, help: { type: 'boolean', short: 'h' } },
      allowPositionals: c.allowPositionals ?? false,
      strict: true,
    });
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    const what = msg.replace(/^Unknown option/, 'unknown flag').replace(/\. To specify.*$/s, '');
    throw new UsageError(`${join(prefix, c.name)}: ${what}: see \`${join(prefix, c.name)} --help\``);
  }
  if (parsed.values.help) {
    io.out(helpText(c, prefix));
    return EXIT.ok;
  }
  if (!c.run) throw new UsageError(`${join(prefix, c.name)} needs a subcommand`);
  return c.run(parsed.values as Record<string, unknown>, parsed.positionals, io);
}

/**
 * Runs `fn` with an AbortSignal that SIGINT or SIGTERM aborts, so long
 * commands (lab up, demo) can stop between steps and clean up.
 */
export async function untilSignal<T>(fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const abort = new AbortController();
  const onSignal = (): void => abort.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    return await fn(abort.signal);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/** Resolves at the first SIGINT or SIGTERM (for commands that serve until stopped). */
export function termination(): Promise<void> {
  return untilSignal((signal) => new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true })));
}
