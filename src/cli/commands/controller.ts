import { LIMITS } from '../../api/limits';
import { ClientError, ControllerClient, credentialsPath } from '../../controller/client';
import { DEFAULT_DATA_DIR, DEFAULT_LISTEN, DEFAULT_METRICS_LISTEN, startController } from '../../controller/controller';
import { LISTENER_DEFAULTS, type ListenerLimits } from '../../controller/listen';
import { installProcessPolicy } from '../../controller/process-policy';
import { createLogger } from '../../log';
import { defineCommand, EXIT, termination, UsageError, type Command } from '../command';
import { TOKEN_DEFAULTS } from '../../controller/api/ledger';
import { TOKEN_ENV } from '../../node-proxy/identity';
import { intFlag } from '../output';

/** Parses 90s, 15m, 24h, 7d (or plain seconds). */
export function parseDurationSeconds(flag: string, s: string): number {
  const m = /^(\d+)(s|m|h|d)?$/.exec(s);
  if (!m) throw new UsageError(`--${flag} "${s}" must be a duration like 90s, 15m, 24h or 7d`);
  return Number(m[1]) * { s: 1, m: 60, h: 3600, d: 86400 }[(m[2] ?? 's') as 's' | 'm' | 'h' | 'd'];
}

/** Parses 500ms, 10s, 5m (or plain milliseconds) into milliseconds. */
export function parseDurationMs(flag: string, s: string): number {
  const m = /^(\d+)(ms|s|m)?$/.exec(s);
  if (!m || Number(m[1]) === 0) throw new UsageError(`--${flag} "${s}" must be a positive duration like 500ms, 10s or 5m`);
  return Number(m[1]) * { ms: 1, s: 1000, m: 60_000 }[(m[2] ?? 'ms') as 'ms' | 's' | 'm'];
}

function parseCount(flag: string, s: string): number {
  if (!/^\d+$/.test(s) || Number(s) === 0 || !Number.isSafeInteger(Number(s))) throw new UsageError(`--${flag} "${s}" must be a positive whole number`);
  return Number(s);
}

/** The listener flags an operator tunes, each onto its limit. */
const LIMIT_FLAGS = {
  'max-connections': { limit: 'maxConnections', parse: parseCount, help: 'open gRPC connections in total (also capped by the file descriptor limit)' },
  'max-connections-per-peer': { limit: 'maxConnectionsPerPeer', parse: parseCount, help: 'open gRPC connections from one IPv4 address (raise it when nodes share a NAT address)' },
  'max-handshakes': { limit: 'maxHandshakes', parse: parseCount, help: 'TLS handshakes in progress at once' },
  'max-handshakes-per-peer': { limit: 'maxHandshakesPerPeer', parse: parseCount, help: 'TLS handshakes in progress from one peer' },
  'handshake-timeout': { limit: 'handshakeTimeoutMs', parse: parseDurationMs, help: 'time a connection has to finish TLS' },
  'idle-timeout': { limit: 'idleTimeoutMs', parse: parseDurationMs, help: 'a gRPC session with no call in progress this long is closed' },
  'max-streams': { limit: 'maxConcurrentStreams', parse: parseCount, help: 'calls in progress on one gRPC session' },
  'metrics-max-connections': { limit: 'metricsMaxConnections', parse: parseCount, help: 'open connections to the metrics port' },
  'metrics-request-timeout': { limit: 'metricsRequestTimeoutMs', parse: parseDurationMs, help: 'time a metrics request has to arrive whole' },
} as const satisfies Record<string, { limit: keyof ListenerLimits; parse: (flag: string, s: string) => number; help: string }>;

function showDefault(limit: keyof ListenerLimits): string {
  const v = LISTENER_DEFAULTS[limit];
  return limit.endsWith('Ms') ? (v % 1000 === 0 ? `${v / 1000}s` : `${v}ms`) : String(v);
}

const limitOptions = Object.fromEntries(Object.keys(LIMIT_FLAGS).map((f) => [f, { type: 'string' as const }])) as Record<keyof typeof LIMIT_FLAGS, { type: 'string' }>;
const limitHelp = Object.fromEntries(Object.entries(LIMIT_FLAGS).map(([f, d]) => [f, `${d.help} (default ${showDefault(d.limit)})`])) as Record<keyof typeof LIMIT_FLAGS, string>;

function limitsFrom(values: Record<string, unknown>): Partial<ListenerLimits> {
  const out: Partial<Record<keyof ListenerLimits, number>> = {};
  for (const [flag, d] of Object.entries(LIMIT_FLAGS)) {
    const v = values[flag];
    if (typeof v === 'string') out[d.limit] = d.parse(flag, v);
  }
  // The request timeout bounds the headers too; a shorter one would be refused.
  if (out.metricsRequestTimeoutMs !== undefined) out.metricsHeadersTimeoutMs = Math.min(out.metricsRequestTimeoutMs, LISTENER_DEFAULTS.metricsHeadersTimeoutMs);
  return out;
}

export const credentialsOption = { credentials: { type: 'string' }, controller: { type: 'string' } } as const;
export const credentialsHelp = {
  credentials: `admin credentials file (default $NODEMESH_CREDENTIALS, else ${DEFAULT_DATA_DIR}/admin.json)`,
  controller: 'controller address IP:PORT (default: the one in the credentials)',
};

/** The admin client for a CLI command. */
export function adminClient(values: Record<string, unknown>): ControllerClient {
  return ControllerClient.fromCredentials(credentialsPath(values.credentials as string | undefined), { address: values.controller as string | undefined });
}

/** Runs fn with an admin client; unreachable controller -> exit 2, refused -> exit 1. */
export async function withAdmin(values: Record<string, unknown>, io: { err: (s: string) => void }, fn: (c: ControllerClient) => Promise<number>): Promise<number> {
  const client = adminClient(values);
  try {
    return await fn(client);
  } catch (err) {
    if (err instanceof ClientError) {
      io.err(`error: ${err.message}\n`);
      return err.unreachable ? EXIT.unreachable : EXIT.rejected;
    }
    throw err;
  } finally {
    client.close();
  }
}

const tokenCreate = defineCommand({
  name: 'create',
  summary: 'Create a bootstrap token a node joins with (single use, 24 h, unless told otherwise)',
  usage: 'controller token create [--node N] [--uses N] [--ttl 24h]',
  description:
    'Prints the token on stdout. Give it to the node proxy in a file (--token-file, mode 0600)\n' +
    `or in $${TOKEN_ENV}, never on a command line. Without --node the token joins only node\n` +
    'names that never joined before; a revoked node needs a token made for it.',
  options: { node: { type: 'string' }, uses: { type: 'string', default: String(TOKEN_DEFAULTS.uses) }, ttl: { type: 'string', default: '24h' }, ...credentialsOption },
  optionHelp: {
    node: 'the node the token is for',
    uses: `how many joins it allows (1-${TOKEN_DEFAULTS.maxUses})`,
    ttl: `how long it is valid (at most ${TOKEN_DEFAULTS.maxTtlSeconds / 86400}d)`,
    ...credentialsHelp,
  },
  async run(values, _p, io) {
    const cmd = 'nodemesh controller token create';
    const node = (values.node as string | undefined) ?? '';
    if (values.node !== undefined && node === '') throw new UsageError(`${cmd}: --node needs a node name`);
    const uses = intFlag(cmd, 'uses', values.uses, 1, TOKEN_DEFAULTS.maxUses);
    const ttl = parseDurationSeconds('ttl', values.ttl as string);
    if (ttl < 1 || ttl > TOKEN_DEFAULTS.maxTtlSeconds) throw new UsageError(`${cmd}: --ttl must be from 1s to ${TOKEN_DEFAULTS.maxTtlSeconds / 86400}d, not ${String(values.ttl)}`);
    return withAdmin(values, io, async (c) => {
      const t = await c.createToken(node, ttl, uses);
      io.out(`${t.token}\n`);
      io.err(
        `token for ${node ? `node ${node}` : 'any new node'}, ${t.uses} join${t.uses === 1 ? '' : 's'}, valid until ${new Date(t.expiresUnixMs).toISOString()}: ` +
          `write it to a file (mode 0600) and run nodemesh proxy --node ${node || 'NAME'} --controller ${c.address} --token-file FILE\n`,
      );
      return EXIT.ok;
    });
  },
});

const token: Command = {
  name: 'token',
  summary: 'Bootstrap tokens for nodes',
  usage: 'controller token <create> [flags]',
  options: {},
  optionHelp: {},
  subcommands: [tokenCreate],
};

export const controllerCommand = defineCommand({
  name: 'controller',
  summary: 'Run the cluster controller (gRPC on 15010, metrics on 15014)',
  usage: 'controller [--data-dir DIR] [--listen IP:PORT] [--metrics-listen IP:PORT] [--san NAME]...',
  description:
    'Keeps the mesh resources in a crash-safe store under --data-dir, signs certificates with its\n' +
    'CA (made on first start, or --ca-cert/--ca-key), and streams each node its config. On first\n' +
    'start it writes the admin credential to DIR/admin.json, which the CLI finds by default.\n' +
    'Also: `nodemesh controller token create --node N`, `nodemesh node list|revoke`.',
  options: {
    'data-dir': { type: 'string', default: DEFAULT_DATA_DIR },
    listen: { type: 'string', default: DEFAULT_LISTEN },
    'metrics-listen': { type: 'string', default: DEFAULT_METRICS_LISTEN },
    san: { type: 'string', multiple: true },
    'ca-cert': { type: 'string' },
    'ca-key': { type: 'string' },
    'trust-domain': { type: 'string' },
    'log-level': { type: 'string', default: 'info' },
    'workload-cert-lifetime': { type: 'string' },
    'node-cert-lifetime': { type: 'string', default: '24h' },
    ...limitOptions,
    'max-request-bytes': { type: 'string', default: String(LIMITS.maxRequestBytes) },
  },
  optionHelp: {
    ...limitHelp,
    'workload-cert-lifetime': 'workload certificate lifetime (e.g. 30s, 24h), over MeshConfig',
    'node-cert-lifetime': 'node certificate lifetime; nodes renew at half of it, and a revoked node stays on the revocation list at most this long',
    'data-dir': 'where the store, the CA and admin.json live',
    listen: 'gRPC address',
    'metrics-listen': 'Prometheus metrics and /healthz address',
    san: 'extra name or IP in the server certificate (repeatable)',
    'ca-cert': 'operator-provided root CA certificate (PEM)',
    'ca-key': 'its private key (PEM)',
    'trust-domain': 'trust domain until a MeshConfig sets one (default cluster.local)',
    'log-level': 'trace, debug, info, warn, error',
    'max-request-bytes': 'largest gRPC request accepted, in bytes (clients send at most the default unless told)',
  },
  subcommands: [token],
  async run(values, _p, io) {
    if (Boolean(values['ca-cert']) !== Boolean(values['ca-key'])) throw new UsageError('nodemesh controller: --ca-cert and --ca-key go together');
    const nodeCertLifetime = parseDurationSeconds('node-cert-lifetime', values['node-cert-lifetime'] as string);
    if (nodeCertLifetime < 2) throw new UsageError(`nodemesh controller: --node-cert-lifetime must be at least 2s (nodes renew at half of it), not ${String(values['node-cert-lifetime'])}`);
    const limits = limitsFrom(values);
    const maxRequestBytes = intFlag('nodemesh controller', 'max-request-bytes', values['max-request-bytes'], 64 * 1024, 1024 * 1024 * 1024);
    const log = createLogger({ level: values['log-level'] as string });
    const c = await startController({
      dataDir: values['data-dir'] as string,
      listen: values.listen as string,
      metricsListen: values['metrics-listen'] as string,
      sans: (values.san as string[] | undefined) ?? [],
      caCertFile: values['ca-cert'] as string | undefined,
      caKeyFile: values['ca-key'] as string | undefined,
      trustDomain: values['trust-domain'] as string | undefined,
      workloadCertLifetimeSeconds: values['workload-cert-lifetime'] ? parseDurationSeconds('workload-cert-lifetime', values['workload-cert-lifetime'] as string) : undefined,
      nodeCertLifetimeSeconds: nodeCertLifetime,
      limits,
      maxRequestBytes,
      log,
    });
    const uninstall = installProcessPolicy(log.child({ component: 'controller' }), c.metrics);
    io.out(`controller serving on port ${c.port} (metrics ${c.metricsPort}); admin credentials: ${c.credentialsPath}\n`);
    await termination();
    log.info('shutting down');
    await c.close();
    uninstall();
    log.flush();
    return EXIT.ok;
  },
});
