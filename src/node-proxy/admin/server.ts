/**
 * The proxy's HTTP endpoints: admin on 127.0.0.1:15000 and on a unix socket
 * (so the CLI on the host reaches a proxy inside a node namespace), metrics
 * on 15020, readiness on 15021.
 *   /flows            JSON; ?from=&to=&verdict=&live=&limit=; ?follow=1 streams NDJSON; with an
 *                     upgrade's draining predecessors' flows merged in (./draining.ts)
 *   /config_dump      what the controller pushed
 *   /status           readiness, versions, connections, data path counters
 *   /metrics          as on the metrics port (the unix socket reaches it across network namespaces)
 *   POST /upgrade     unix socket only: a new process of this node takes over (./handover.ts)
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';

import type { Logger } from '../../log';
import type { Flow, FlowFilter, FlowTable, FlowVerdict } from '../flows';
import { drainingSocketOf, drainingSockets, fetchDraining, followDraining, forgetIfGone, mergeFlows, type DrainingSocket } from './draining';
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

/** Where an upgrade's draining predecessors are found (the admin socket path), and where to warn of one that does not answer. */
interface Predecessors {
  adminSocket: string;
  log?: Logger;
  /** This process's own side socket, while it has one (prepared for an upgrade: it still serves here meanwhile). */
  own(): string | undefined;
}

function drainersOf(p: Predecessors): DrainingSocket[] {
  const own = p.own();
  return drainingSockets(p.adminSocket).filter((d) => d.file !== own);
}

/** A draining process that failed to answer: warned of, its file removed if it is gone (admin/draining.ts). */
function skipped(p: Predecessors, d: DrainingSocket, err: Error): void {
  if (forgetIfGone(d)) return void p.log?.info({ pid: d.pid, file: d.file }, 'upgrade: a draining predecessor is gone; its side socket removed');
  p.log?.warn({ pid: d.pid, file: d.file, err: err.message }, "upgrade: a draining predecessor did not answer for its flows: they are left out");
}

async function flowsOf(src: AdminSources, p: Predecessors | undefined, filter: FlowFilter, query: URLSearchParams, limit: number): Promise<Flow[]> {
  const own = src.flows.list(filter, limit);
  const drainers = p ? drainersOf(p) : [];
  if (!p || drainers.length === 0) return own;
  const theirs = await Promise.all(
    drainers.map((d) =>
      fetchDraining(d, `/flows?${query}`).then(
        (flows) => ({ pid: d.pid, flows: Array.isArray(flows) ? (flows as Flow[]) : [] }),
        (err: Error) => (skipped(p, d, err), { pid: d.pid, flows: [] }),
      ),
    ),
  );
  return mergeFlows(own, theirs, limit);
}

/** `predecessors`: merge an upgrade's draining processes into /flows (not on their own side sockets). */
function adminHandler(src: AdminSources, predecessors?: Predecessors): http.RequestListener {
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
          // The draining predecessors' events too, for as long as each runs (it filters its own).
          const stops = predecessors
            ? drainersOf(predecessors).map((d) =>
                followDraining(d, `/flows?${url.searchParams}`, (line) => res.write(line + '\n'), (err) => skipped(predecessors, d, err)),
              )
            : [];
          req.on('close', () => {
            off();
            for (const stop of stops) stop();
          });
          return;
        }
        const limit = Number(url.searchParams.get('limit') ?? 1000);
        return void flowsOf(src, predecessors, filter, url.searchParams, limit).then(
          (flows) => json(res, 200, flows),
          (err: Error) => json(res, 500, { error: err.message }),
        );
      }
      case '/config_dump':
        return json(res, 200, src.configDump());
      case '/status':
        return json(res, 200, src.status());
      case '/metrics':
        return metricsAnswer(src, res);
      default:
        return json(res, 404, { error: 'not found: /flows, /config_dump, /status, /metrics' });
    }
  };
}

/** /metrics: this process's, with an upgrade's predecessors' counters added in (ProxyMetrics.exposition). */
function metricsAnswer(src: AdminSources, res: http.ServerResponse): void {
  src.metrics.exposition().then(
    ({ contentType, body }) => {
      res.writeHead(200, { 'content-type': contentType });
      res.end(body);
    },
    (err: Error) => json(res, 500, { error: err.message }),
  );
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
  /** Where a draining predecessor that does not answer is warned of. */
  log?: Logger;
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
  /**
   * An upgrade prepares: answers GET on `<admin socket>.draining-<pid>` from
   * now on (the new process owns the socket path from its start, and lists
   * this one's flows from there); resolves once it does (the same promise
   * when asked again). close() or stopDraining() closes it and removes its file.
   */
  serveDraining(): Promise<void>;
  /** The upgrade was given up: the side socket goes. */
  stopDraining(): Promise<void>;
  /** Once handed over: closes the admin, metrics and health servers (the new process's now), not the side socket. */
  retire(): Promise<void>;
}

/** Starts the admin, metrics and health servers; returns a closer. */
export async function startAdmin(src: AdminSources, l: AdminListen): Promise<AdminHandle> {
  const servers: http.Server[] = [];
  const limits = l.limits ?? LISTENER_DEFAULTS;
  const reporter = l.reporter ?? new ListenerReporter();
  try {
    let side: { file: string; server: http.Server; bound: Promise<void> } | undefined;
    const predecessors = l.adminSocket ? { adminSocket: l.adminSocket, log: l.log, own: () => side?.file } : undefined;
    const admin = createHttpServer('admin', limits.admin, reporter, adminHandler(src, predecessors)).server;
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
      const viaSocket = createHttpServer('admin-socket', limits.admin, reporter, adminHandler(src, predecessors)).server;
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
      metricsAnswer(src, res);
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
    // Not waiting for every connection to end: an upgrade's lease, switched away from HTTP, outlives the
    // servers (it carries a draining process's reports to the end, see ./handover.ts). Listening stops at
    // close(), and the HTTP connections end at closeAllConnections() (followers of /flows never end on their own).
    const closeAll = async (list: http.Server[]): Promise<void> => {
      for (const s of list) {
        s.close();
        s.closeAllConnections();
      }
      await new Promise((r) => setImmediate(r));
    };
    const stopDraining = async (): Promise<void> => {
      const was = side;
      if (!was) return;
      side = undefined;
      await was.bound;
      await closeAll([was.server]);
      fs.rmSync(was.file, { force: true });
    };
    return {
      ports: { admin: port(admin), metrics: port(metrics), health: port(health) },
      close: () =>
        (closing ??= (async () => {
          await closeAll(servers.splice(0));
          if (l.adminSocket && socketInode !== undefined && inodeOf(l.adminSocket) === socketInode) fs.rmSync(l.adminSocket, { force: true });
          await stopDraining();
        })()),
      serveDraining: () => {
        if (closing || !l.adminSocket) return Promise.resolve();
        if (!side) {
          const file = drainingSocketOf(l.adminSocket, process.pid);
          fs.rmSync(file, { force: true });
          // Its own flows only: the process that owns the admin socket merges every draining one's.
          const server = createHttpServer('admin-draining', limits.admin, reporter, adminHandler(src)).server;
          const bound = listen(server, file).catch((err: Error) =>
            l.log?.warn({ file, err: err.message }, "upgrade: cannot bind the draining side socket: this process's flows are out of reach while it drains"),
          );
          side = { file, server, bound };
        }
        return side.bound;
      },
      stopDraining,
      retire: async () => {
        if (!closing) await closeAll(servers.splice(0));
      },
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
