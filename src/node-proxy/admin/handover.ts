/**
 * The hand-over between two proxy processes of one node (see
 * docs/architecture.md, 'Upgrades that drop nothing'): `POST /upgrade` on the
 * admin unix socket only, switched (HTTP Upgrade) to one JSON line per
 * message. The connection is the lease: when the new process goes away, or
 * aborts, before it asked for the hand-over, the running one resumes its
 * config stream and carries on as if nothing happened.
 *
 *   running -> new  {"event":"prepared","pid":…,"nextFlowId":…,"configVersion":…}
 *   new -> running  {"do":"hand-over","drainMs":…}   or  {"do":"abort","reason":"…"}
 *   running -> new  {"event":"handed-over","live":{…}}   (then it closes the connection)
 */
import * as http from 'node:http';
import type * as net from 'node:net';

import { MeshError } from '../../errors';

export const UPGRADE_PROTOCOL = 'nodemesh-handover';

/** What the running proxy says when it agreed to be replaced. */
export interface Prepared {
  pid: number;
  /** The flow id it would give next: the new process continues after it. */
  nextFlowId: number;
  configVersion: number;
}

/** Connections the running proxy still carries when it hands over. */
export interface LiveAtHandover {
  outbound: number;
  tunnelStreams: number;
}

/** The running proxy's side, implemented by NodeProxy. */
export interface HandoverSide {
  /** Stops the config stream (the controller keeps one stream per node) and says where flow ids stand. */
  prepare(): Prepared;
  /** The new process went away or gave up: take the config stream back. */
  resume(reason: string): void;
  /** Stops listening (right after this answer is written) and drains for at most `drainMs`, then exits; returns what is still open. */
  handOver(drainMs: number): LiveAtHandover;
}

export class UpgradeError extends MeshError {}

function lines(socket: net.Socket, head: Buffer, onLine: (msg: Record<string, unknown>) => void): void {
  let rest = head.toString();
  const drain = (): void => {
    let i: number;
    while ((i = rest.indexOf('\n')) >= 0) {
      const line = rest.slice(0, i);
      rest = rest.slice(i + 1);
      try {
        onLine(JSON.parse(line) as Record<string, unknown>);
      } catch {
        socket.destroy();
        return;
      }
    }
    // A peer that sends a line longer than any message of this protocol is not a proxy.
    if (rest.length > 4096) socket.destroy();
  };
  socket.on('data', (d: Buffer) => {
    rest += d.toString();
    drain();
  });
  drain();
}

function refuse(socket: net.Socket, status: string, why: string): void {
  const body = JSON.stringify({ error: why }) + '\n';
  socket.end(`HTTP/1.1 ${status}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
}

/**
 * Answers `POST /upgrade` on `server` (the admin unix socket's server: the
 * socket file is root's, so only root reaches it; the TCP admin listener
 * never gets this). One upgrade at a time.
 */
export function serveHandover(server: http.Server, side: HandoverSide): void {
  let busy = false;
  let done = false;
  server.on('upgrade', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
    socket.on('error', () => {});
    const url = new URL(req.url ?? '/', 'http://admin');
    if (req.method !== 'POST' || url.pathname !== '/upgrade' || String(req.headers.upgrade).toLowerCase() !== UPGRADE_PROTOCOL)
      return refuse(socket, '400 Bad Request', `only POST /upgrade with upgrade: ${UPGRADE_PROTOCOL}`);
    if (done) return refuse(socket, '409 Conflict', 'this proxy has handed over already and is draining');
    if (busy) return refuse(socket, '409 Conflict', 'another upgrade of this proxy is under way');
    let prepared: Prepared;
    try {
      prepared = side.prepare();
    } catch (err) {
      return refuse(socket, '503 Service Unavailable', (err as Error).message);
    }
    busy = true;
    // The lease lasts as long as the new process takes to start: no idle timeout. The HTTP server's
    // sockets allow half-open: without this, a new process that died would leave it open (and this
    // side prepared) for good.
    socket.setTimeout(0);
    socket.once('end', () => socket.end());
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nupgrade: ${UPGRADE_PROTOCOL}\r\nconnection: upgrade\r\n\r\n`);
    socket.write(JSON.stringify({ event: 'prepared', ...prepared }) + '\n');
    let handed = false;
    let abortReason = '';
    lines(socket, head, (msg) => {
      if (handed) return;
      if (msg.do === 'hand-over') {
        const drainMs = Number(msg.drainMs);
        if (!Number.isSafeInteger(drainMs) || drainMs < 0) return void socket.destroy();
        handed = true;
        done = true;
        const live = side.handOver(drainMs);
        socket.end(JSON.stringify({ event: 'handed-over', live }) + '\n');
      } else if (msg.do === 'abort') {
        abortReason = typeof msg.reason === 'string' ? msg.reason.slice(0, 1000) : 'aborted';
        socket.end();
      }
    });
    socket.once('close', () => {
      if (handed) return;
      busy = false;
      side.resume(abortReason || 'the new process went away before it took over');
    });
  });
}

/** The new process's hold on a prepared proxy. */
export interface UpgradeLease {
  readonly prepared: Prepared;
  /** Asks the running proxy to stop listening and drain; resolves with what it still carries. */
  handOver(drainMs: number, timeoutMs?: number): Promise<LiveAtHandover>;
  /** Lets it resume (also what happens if this process dies). */
  abort(reason: string): void;
}

/** Asks the proxy behind `socketPath` to prepare its replacement; bounded by `timeoutMs`. */
export function prepareUpgrade(socketPath: string, timeoutMs = 10_000): Promise<UpgradeLease> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, method: 'POST', path: '/upgrade', headers: { connection: 'upgrade', upgrade: UPGRADE_PROTOCOL } });
    let upgraded: net.Socket | undefined;
    const timer = setTimeout(() => {
      req.destroy();
      // Once switched, the socket is no longer the request's: this process must not hold the lease it gave up on.
      upgraded?.destroy();
      reject(new UpgradeError('NM_ERR_UPGRADE', `the running proxy on ${socketPath} did not answer the upgrade within ${timeoutMs} ms`));
    }, timeoutMs);
    req.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(
        new UpgradeError(
          'NM_ERR_UPGRADE',
          `nothing to upgrade: no proxy answers on ${socketPath} (${err.code ?? err.message}); start it without --upgrade`,
        ),
      );
    });
    req.on('response', (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => {
        clearTimeout(timer);
        reject(new UpgradeError('NM_ERR_UPGRADE', `the running proxy refused the upgrade: HTTP ${res.statusCode}: ${body.trim()}`));
      });
    });
    req.on('upgrade', (_res, socket: net.Socket, head: Buffer) => {
      upgraded = socket;
      socket.on('error', () => {});
      socket.once('end', () => socket.end());
      let waiting: ((msg: Record<string, unknown>) => void) | undefined;
      let closed = false;
      const onClosed: (() => void)[] = [];
      socket.once('close', () => {
        closed = true;
        for (const f of onClosed.splice(0)) f();
      });
      waiting = (msg) => {
        if (msg.event !== 'prepared') return;
        clearTimeout(timer);
        waiting = undefined;
        const prepared: Prepared = { pid: Number(msg.pid), nextFlowId: Number(msg.nextFlowId), configVersion: Number(msg.configVersion) };
        resolve({
          prepared,
          abort: (reason) => {
            if (!closed) socket.end(JSON.stringify({ do: 'abort', reason }) + '\n');
          },
          handOver: (drainMs, handTimeoutMs = 10_000) =>
            new Promise<LiveAtHandover>((ok, fail) => {
              const t = setTimeout(() => {
                socket.destroy();
                fail(new UpgradeError('NM_ERR_UPGRADE', `the old proxy (pid ${prepared.pid}) did not confirm the hand-over within ${handTimeoutMs} ms`));
              }, handTimeoutMs);
              if (closed) return fail(new UpgradeError('NM_ERR_UPGRADE', `the old proxy (pid ${prepared.pid}) went away before the hand-over`));
              waiting = (m) => {
                if (m.event !== 'handed-over') return;
                clearTimeout(t);
                waiting = undefined;
                ok(m.live as LiveAtHandover);
              };
              onClosed.push(() => {
                clearTimeout(t);
                fail(new UpgradeError('NM_ERR_UPGRADE', `the old proxy (pid ${prepared.pid}) closed the upgrade connection before it handed over`));
              });
              socket.write(JSON.stringify({ do: 'hand-over', drainMs }) + '\n');
            }),
        });
      };
      // After the first waiter is set: the 'prepared' line may have come with the 101 (in `head`).
      lines(socket, head, (msg) => waiting?.(msg));
      socket.once('close', () => {
        if (!waiting) return;
        clearTimeout(timer);
        reject(new UpgradeError('NM_ERR_UPGRADE', `the running proxy on ${socketPath} closed the upgrade connection before it prepared`));
      });
    });
    req.end();
  });
}
