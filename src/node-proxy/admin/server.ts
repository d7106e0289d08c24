/**
 * The proxy's HTTP endpoints: admin on 127.0.0.1:15000 and on a unix socket
 * (so the CLI on the host reaches a proxy inside a node namespace), metrics
 * on 15020, readiness on 15021.
 *   /flows            JSON; ?from=&to=&verdict=&live=&limit=; ?follow=1 streams NDJSON
 *   /config_dump      what the controller pushed
 *   /status           readiness, versions, connections, data path counters
 *   POST /upgrade     unix socket only: a new process of this node takes over (./handover.ts)
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';

import type { FlowFilter, FlowTable, FlowVerdict } from '../flows';
import { serveHandover, type HandoverSide } from './handover';
import { matchesFlow } from '../flows';
import { createHttpServer, LISTENER_DEFAULTS, ListenerReporter, type ListenerLimits } from '../listeners';
import type { ProxyMetrics } from '../metrics';

export interface AdminSources {
  flows: FlowTable;
  configDump(): unknown;
  status(): unknown;
  ready(): boolean;
  /** Why it is or is not ready, in a few words (where its config came from): the readiness body after "ready: " or "not ready: ". */
  readiness?(): string;
  metrics: ProxyMetrics;
  /** The running proxy's side of an upgrade, served on the unix socket only. */
  handover?: HandoverSide;
}

function json(res: http.ServerResponse, code: number, body: unknown): void {
  res.writeHead(code, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), 2) + '\n');
}

export function filterOf(q: URLSearchParams): FlowFilter {
  const f: FlowFilter = {};
  if (q.get('from')) f.from = q.get('from')!;
  if (q.get('to')) f.to = q.get('to')!;
  const v = q.get('verdict');
  if (v) f.verdict = v as FlowVerdict;
  if (q.get('live')) f.live = q.get('live') === '1' || q.get('live') === 'true';
  return f;
}

function adminHandler(src: AdminSources): http.RequestListener {
  return (req, res) => {
    const url = new URL(req.url ?? '/', 'http://admin');
    if (req.method !== 'GET') return json(res, 405, { error: 'GET only' });
    switch (url.pathname) {
      case '/flows': {
        const filter = filterOf(url.searchParams);
        const verdict = filter.verdict;
        if (verdict && !['allowed', 'denied', 'dropped', 'error'].includes(verdict)) return json(res, 400, { error: `verdict must be allowed, denied, dropped or error, not ${verdict}` });
        if (url.searchParams.get('follow') === '1') {
          // A follower is quiet between flows: exempt from the idle timeout (the admin listener is the host's only).
          req.socket.setTimeout(0);
          res.writeHead(200, { 'content-type': 'application/x-ndjson' });
          for (const f of src.flows.list(filter, Number(url.searchParams.get('limit') ?? 100))) res.write(JSON.stringify({ event: f.end ? 'close' : 'open', flow: f }) + '\n');
          const off = src.flows.follow((e) => {
            if (matchesFlow(e.flow, filter)) res.write(JSON.stringify(e) + '\n');
          });
          req.on('close', off);
          return;
        }
        return json(res, 200, src.flows.list(filter, Number(url.searchParams.get('limit') ?? 1000)));
      }
      case '/config_dump':
        return json(res, 200, src.configDump());
      case '/status':
        return json(res, 200, src.status());
      default:
        return json(res, 404, { error: 'not found: /flows, /config_dump, /status' });
    }
  };
}

export interface AdminListen {
  adminHost: string;
  adminPort: number;
  /** Unix socket path for the admin API (its directory is created). */
  adminSocket?: string;
  metricsHost: string;
  metricsPort: number;
  healthHost: string;
  healthPort: number;
  /** Bounds of these HTTP listeners (default LISTENER_DEFAULTS). */
  limits?: Pick<ListenerLimits, 'http' | 'admin'>;
  reporter?: ListenerReporter;
}

function listen(server: http.Server, target: { port: number; host: string } | string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    if (typeof target === 'string') server.listen(target, resolve);
    // reusePort: during an upgrade the new process listens beside this one (docs/architecture.md, 'Upgrades that drop nothing').
    else server.listen({ port: target.port, host: target.host, reusePort: true }, resolve);
  });
}

/** The socket file's identity, so a closing proxy removes its own file and never the one a new process bound since. */
function inodeOf(file: string): string | undefined {
  try {
    // With its change time: tmpfs gives a removed file's inode number to the next one.
    const st = fs.statSync(file, { bigint: true });
    return `${st.ino}:${st.ctimeNs}`;
  } catch {
    return undefined;
  }
}

export interface AdminHandle {
  ports: { admin: number; metrics: number; health: number };
  /** Closes every server (safe twice); the socket file goes only if it is still this process's. */
  close(): Promise<void>;
  /** Binds the socket path again if the file there is gone (an upgrade's new process failed after it bound it, and removed it as it went). */
  reclaimSocket(): Promise<void>;
}

/** Starts the admin, metrics and health servers; returns a closer. */
export async function startAdmin(src: AdminSources, l: AdminListen): Promise<AdminHandle> {
  const servers: http.Server[] = [];
  const limits = l.limits ?? LISTENER_DEFAULTS;
  const reporter = l.reporter ?? new ListenerReporter();
  try {
    const admin = createHttpServer('admin', limits.admin, reporter, adminHandler(src)).server;
    servers.push(admin);
    await listen(admin, { port: l.adminPort, host: l.adminHost });
    let socketInode: string | undefined;
    let viaSocketServer: http.Server | undefined;
    // Bound under a name of this process's, then renamed over the path: the path is never missing (an
    // upgrade's old process keeps serving until then), and Node removes a unix listener's file by the name
    // it bound when that listener closes, even at exit, which is then this process's own name, never the path.
    const bindSocket = async (file: string): Promise<void> => {
      fs.mkdirSync(path.dirname(file), { recursive: true });
      const own = `${file}.${process.pid}`;
      fs.rmSync(own, { force: true });
      const viaSocket = createHttpServer('admin-socket', limits.admin, reporter, adminHandler(src)).server;
      if (src.handover) serveHandover(viaSocket, src.handover);
      servers.push(viaSocket);
      viaSocketServer = viaSocket;
      await listen(viaSocket, own);
      fs.renameSync(own, file);
      socketInode = inodeOf(file);
    };
    if (l.adminSocket) await bindSocket(l.adminSocket);
    const metrics = createHttpServer('metrics', limits.http, reporter, (req, res) => {
      if (req.url !== '/metrics') return json(res, 404, { error: 'not found: /metrics' });
      src.metrics.registry.metrics().then(
        (body) => {
          res.writeHead(200, { 'content-type': src.metrics.registry.contentType });
          res.end(body);
        },
        (err: Error) => json(res, 500, { error: err.message }),
      );
    }).server;
    servers.push(metrics);
    await listen(metrics, { port: l.metricsPort, host: l.metricsHost });
    const health = createHttpServer('health', limits.http, reporter, (req, res) => {
      if (req.url !== '/healthz/ready') return json(res, 404, { error: 'not found: /healthz/ready' });
      const ok = src.ready();
      res.writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' });
      const why = src.readiness?.();
      res.end(`${ok ? 'ready' : 'not ready'}${why ? `: ${why}` : ''}\n`);
    }).server;
    servers.push(health);
    await listen(health, { port: l.healthPort, host: l.healthHost });
    const port = (s: http.Server): number => (s.address() as { port: number }).port;
    let closing: Promise<void> | undefined;
    return {
      ports: { admin: port(admin), metrics: port(metrics), health: port(health) },
      close: () =>
        (closing ??= (async () => {
          await Promise.all(
            servers.map((s) => {
              const closed = new Promise<void>((r) => s.close(() => r()));
              s.closeAllConnections(); // followers of /flows never end on their own
              return closed;
            }),
          );
          if (l.adminSocket && socketInode !== undefined && inodeOf(l.adminSocket) === socketInode) fs.rmSync(l.adminSocket, { force: true });
        })()),
      reclaimSocket: async () => {
        if (!l.adminSocket || closing || inodeOf(l.adminSocket) !== undefined) return;
        const stale = viaSocketServer;
        if (stale) {
          servers.splice(servers.indexOf(stale), 1);
          stale.close();
          stale.closeAllConnections();
        }
        await bindSocket(l.adminSocket);
      },
    };
  } catch (err) {
    for (const s of servers) s.close();
    throw err;
  }
}
