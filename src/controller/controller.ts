/**
 * The cluster controller (see docs/architecture.md, 'The controller'): the
 * store, the CA, the registry of derived state, config push to nodes, and the
 * gRPC API on 15010 (metrics and health on 15014). Nothing is served unauthenticated: TLS always, and
 * each call checks its caller (admin, node, or a bootstrap token for Join).
 */
import * as fs from 'node:fs';
import type * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';

import * as grpc from '@grpc/grpc-js';

import { formatHostPort } from '../api/address';
import { DEFAULT_DATA_DIR, SERVER_NAME, type Credentials } from '../api/credentials';
import { API_VERSION } from '../api/kinds';
import { LIMITS } from '../api/limits';
import { services } from '../api/proto';
import { MeshError } from '../errors';
import { silentLogger, type Logger } from '../log';
import { readOpenFileLimit } from '../net';
import { CertificateAuthority, spiffeAdminId } from './ca';
import { certificateServices } from './api/certificates';
import { CertificateLedger, NODE_CERT_DEFAULTS } from './api/ledger';
import { nodeConfigDefinition, nodeConfigService } from './api/node-config';
import { resourcesService } from './api/resources';
import { connectionBudget, listenGrpc, parseListenerLimits, Refusals, type GrpcListener, type ListenerLimits } from './listen';
import { ControllerMetrics, serveMetrics } from './metrics';
import { ConfigHub } from './push';
import { Registry } from './registry';
import { SqliteStore } from './store';

export const DEFAULT_LISTEN = '0.0.0.0:15010';
export const DEFAULT_METRICS_LISTEN = '0.0.0.0:15014';
/** The name in the controller's server certificate that clients check. */

export interface ControllerOptions {
  dataDir?: string;
  listen?: string;
  metricsListen?: string;
  /** Extra names or addresses for the server certificate. */
  sans?: string[];
  /** Operator-provided root CA (PEM files); else one is made in the data dir. */
  caCertFile?: string;
  caKeyFile?: string;
  trustDomain?: string;
  heartbeatMs?: number;
  /** Workload certificate lifetime in seconds, over MeshConfig's (short ones test rotation). */
  workloadCertLifetimeSeconds?: number;
  /** Node certificate lifetime in seconds (default NODE_CERT_DEFAULTS.lifetimeSeconds); nodes renew at half of it. */
  nodeCertLifetimeSeconds?: number;
  /** Bounds on 15010 and 15014 over LISTENER_DEFAULTS (flags, tests). */
  limits?: Partial<ListenerLimits>;
  /** Largest request message accepted (default LIMITS.maxRequestBytes). */
  maxRequestBytes?: number;
  log?: Logger;
}

export { DEFAULT_DATA_DIR, SERVER_NAME, type Credentials };

export class ControllerError extends MeshError {}

/** Splits host:port ([v6]:port too), naming the flag on bad input. */
export function parseHostPort(s: string, flag: string): { host: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(s) ?? /^([^:]+):(\d+)$/.exec(s);
  if (!m || !net.isIP(m[1]!) && m[1] !== 'localhost') throw new ControllerError('NM_ERR_USAGE', `${flag} "${s}" must be IP:PORT (e.g. 0.0.0.0:15010)`);
  const port = Number(m[2]);
  if (port > 65535) throw new ControllerError('NM_ERR_USAGE', `${flag} "${s}": port must be 0-65535`);
  return { host: m[1]!, port };
}

/** Message sizes set explicitly, so clients and server agree on them (grpc-js defaults differ by side). */
function messageSizeOptions(maxRequestBytes = LIMITS.maxRequestBytes): grpc.ServerOptions {
  return { 'grpc.max_receive_message_length': maxRequestBytes, 'grpc.max_send_message_length': LIMITS.maxResponseBytes };
}

export interface RunningController {
  port: number;
  metricsPort: number;
  credentialsPath: string;
  store: SqliteStore;
  hub: ConfigHub;
  metrics: ControllerMetrics;
  close(): Promise<void>;
}

export async function startController(opts: ControllerOptions = {}): Promise<RunningController> {
  const log = opts.log ?? silentLogger();
  const dataDir = opts.dataDir ?? DEFAULT_DATA_DIR;
  const listen = parseHostPort(opts.listen ?? DEFAULT_LISTEN, '--listen');
  const metricsListen = parseHostPort(opts.metricsListen ?? DEFAULT_METRICS_LISTEN, '--metrics-listen');
  const limits = parseListenerLimits(opts.limits);
  fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });

  const store = new SqliteStore(dataDir);
  let grpcServer: grpc.Server | undefined;
  let grpcListener: GrpcListener | undefined;
  let metricsServer: http.Server | undefined;
  let heartbeat: NodeJS.Timeout | undefined;
  try {
    const meshSpec = store.get('MeshConfig', undefined, 'default')?.spec as { trustDomain?: string } | undefined;
    const trustDomain = meshSpec?.trustDomain ?? opts.trustDomain ?? 'cluster.local';
    const ca =
      opts.caCertFile && opts.caKeyFile
        ? await CertificateAuthority.fromFiles(opts.caCertFile, opts.caKeyFile, { trustDomain })
        : await CertificateAuthority.loadOrCreate(path.join(dataDir, 'ca'), { trustDomain });

    const metrics = new ControllerMetrics();
    const registry = new Registry(ca.rootPem);
    registry.load(store.list(), store.version);
    const hub = new ConfigHub(
      registry,
      {
        acked: (_node, _v, seconds) => metrics.pushSeconds.observe(seconds),
        nacked: (node) => metrics.nacks.inc({ node }),
        connected: (n) => metrics.connectedNodes.set(n),
        resynced: (node, queued) => {
          metrics.configResyncs.inc();
          log.warn({ node, queued }, 'node fell behind its config stream by more than a snapshot: sending it a fresh snapshot');
        },
        refused: (node, reason) => {
          metrics.configRefused.inc();
          log.error({ node, reason }, 'cannot send the node its config');
        },
      },
      store.version,
    );
    metrics.storeVersion.set(store.version);
    store.subscribe((changes, version) => {
      const committedAt = Date.now();
      metrics.storeVersion.set(version);
      hub.changed(registry.apply(changes), version, committedAt);
    });

    const ctx = { log: log.child({ component: 'controller-api' }), metrics };
    const ledger = new CertificateLedger(store, store.certificatesTrackedSince);
    // The revocation list shrinks as revoked certificates expire: recomputed with the heartbeat.
    const publishRevocations = (): void => {
      ledger.prune();
      const list = ledger.revocationList();
      metrics.revokedCertificates.set(list.length);
      hub.refresh(registry.setRevocationList(list));
    };
    publishRevocations();
    const certs = certificateServices(ctx, ca, store, ledger, registry, {
      workload: () => opts.workloadCertLifetimeSeconds ?? registry.meshConfig().certificateLifetimeSeconds,
      node: () => opts.nodeCertLifetimeSeconds ?? NODE_CERT_DEFAULTS.lifetimeSeconds,
    });
    const svc = services();
    const listenLog = log.child({ component: 'controller-listener' });
    const refusals = new Refusals(listenLog, metrics.listenerRejected, limits.refusalLogIntervalMs);
    const nofile = readOpenFileLimit();
    const budget = connectionBudget(limits, nofile);
    if (budget.clamped)
      listenLog.warn(
        { nofile, maxConnections: budget.maxConnections, wanted: limits.maxConnections },
        'the file descriptor limit caps gRPC connections below --max-connections: raise it (ulimit -n, systemd LimitNOFILE=) for more nodes',
      );
    grpcServer = new grpc.Server({
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
      'grpc.max_connection_idle_ms': limits.idleTimeoutMs,
      'grpc.max_concurrent_streams': limits.maxConcurrentStreams,
      'grpc-node.max_session_memory': limits.maxSessionMemoryMb,
      ...messageSizeOptions(opts.maxRequestBytes),
    });
    grpcServer.addService(svc.Resources.service, resourcesService(ctx, store, ca));
    grpcServer.addService(nodeConfigDefinition(), nodeConfigService(ctx, hub, ca, ledger, publishRevocations));
    grpcServer.addService(svc.Bootstrap.service, certs.bootstrap);
    grpcServer.addService(svc.Certificates.service, certs.certificates);

    const hosts = [SERVER_NAME, 'localhost', '127.0.0.1', '::1', ...(opts.sans ?? [])];
    if (listen.host !== '0.0.0.0' && listen.host !== '::') hosts.push(listen.host);
    const server = await ca.issueServerCertificate([...new Set(hosts)], 365 * 24 * 3600);
    const address = formatHostPort(listen.host, listen.port);
    grpcListener = await listenGrpc({
      server: grpcServer,
      host: listen.host,
      port: listen.port,
      tls: { ca: ca.rootPem, cert: server.chainPem, key: server.keyPem },
      limits,
      maxConnections: budget.maxConnections,
      refusals,
      gauges: { connections: metrics.listenerConnections, handshakes: metrics.listenerHandshakes },
      log: listenLog,
    }).catch((err: Error) => {
      throw new ControllerError('NM_ERR_LISTEN', `cannot listen on ${address}: ${err.message} (is another controller running? use --listen)`);
    });
    const port = grpcListener.port;
    metricsServer = await serveMetrics(metrics, metricsListen.host, metricsListen.port, () => true, limits, refusals).catch((err: Error) => {
      throw new ControllerError('NM_ERR_LISTEN', `cannot serve metrics on ${metricsListen.host}:${metricsListen.port}: ${err.message} (use --metrics-listen)`);
    });
    const metricsPort = (metricsServer.address() as net.AddressInfo).port;

    // The admin credential, written once: the CLI finds it by default.
    const credentialsPath = path.join(dataDir, 'admin.json');
    const connectHost = listen.host === '0.0.0.0' ? '127.0.0.1' : listen.host === '::' ? '::1' : listen.host;
    const controllerAddr = formatHostPort(connectHost, port);
    let credentials: Credentials | undefined;
    try {
      credentials = JSON.parse(fs.readFileSync(credentialsPath, 'utf8')) as Credentials;
      ca.verifyPeer(credentials.cert);
    } catch {
      credentials = undefined;
    }
    if (!credentials || credentials.controller !== controllerAddr) {
      let admin: { cert: string; key: string };
      if (credentials) admin = { cert: credentials.cert, key: credentials.key };
      else {
        const issued = await ca.issueClientCertificate(spiffeAdminId(ca.trustDomain), 365 * 24 * 3600);
        admin = { cert: issued.chainPem, key: issued.keyPem };
      }
      const body: Credentials = { apiVersion: API_VERSION, kind: 'Credentials', controller: controllerAddr, serverName: SERVER_NAME, ca: ca.rootPem, cert: admin.cert, key: admin.key };
      const tmp = `${credentialsPath}.tmp`;
      fs.writeFileSync(tmp, JSON.stringify(body, null, 2) + '\n', { mode: 0o600 });
      fs.renameSync(tmp, credentialsPath);
    }

    heartbeat = setInterval(() => {
      hub.heartbeatAll();
      publishRevocations();
    }, opts.heartbeatMs ?? 10_000);
    heartbeat.unref();
    log.info({ component: 'controller', listen: address, port, metricsPort, dataDir, version: store.version, trustDomain, maxConnections: budget.maxConnections }, 'controller serving');

    return {
      port,
      metricsPort,
      credentialsPath,
      store,
      hub,
      metrics,
      close: async () => {
        clearInterval(heartbeat);
        hub.closeAll('controller shutting down');
        await grpcListener!.close();
        await new Promise<void>((resolve) => grpcServer!.tryShutdown(() => resolve()));
        await new Promise<void>((resolve) => metricsServer!.close(() => resolve()));
        store.close();
      },
    };
  } catch (err) {
    clearInterval(heartbeat);
    void grpcListener?.close(0);
    grpcServer?.forceShutdown();
    metricsServer?.close();
    store.close();
    throw err;
  }
}
