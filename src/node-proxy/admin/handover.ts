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
 *   running -> new  {"event":"handed-over","live":{…}}
 *   running -> new  {"event":"metrics","part":[…]} … {"event":"metrics-end"}   (a report)
 *
 * After the hand-over the connection stays open while the old process
 * drains: it is how its counters reach the new one. From its prepare to
 * its exit the running side reports its carried metrics (metrics.ts:
 * counters, histograms, the connection gauges, its own predecessors'
 * included) at once, every REPORT_EVERY_MS when they changed, right after
 * the hand-over and a last time when it has drained; it then closes the
 * connection. A report is its totals so far, cut into lines of at most
 * REPORT_PART_BYTES; each replaces the last, so one lost costs nothing.
 */
import * as http from 'node:http';
import type * as net from 'node:net';
import { StringDecoder } from 'node:string_decoder';

import { MeshError } from '../../errors';
import type { CarriedMetric } from '../metrics';

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
  /**
   * Stops listening (right after this answer is written) and drains for at
   * most `drainMs`; once drained it awaits `lastReport()` (bounded), then
   * exits. Resolves with what is still open, once what the new process may
   * ask of a draining one (its flows) answers.
   */
  handOver(drainMs: number, lastReport: () => Promise<void>): LiveAtHandover | Promise<LiveAtHandover>;
  /** Its carried metrics now (ProxyMetrics.report()). Without it, nothing is reported. */
  report?(): Promise<CarriedMetric[]>;
}

export class UpgradeError extends MeshError {}

/** A line of the running side's, which reads only the new process's short commands. */
const COMMAND_LINE_MAX = 4096;
/** What a report's line holds at most (a metric with more series takes several lines). */
export const REPORT_PART_BYTES = 64 * 1024;
/** The longest line the new process reads: a report's part, with room to spare. */
const REPORT_LINE_MAX = 4 * REPORT_PART_BYTES;
/** A report larger than this is not taken (the last one stays): far above what a node's series come to. */
export const REPORT_MAX_BYTES = 64 * 1024 * 1024;
/** How often the running side reports while its metrics change. */
export const REPORT_EVERY_MS = 1_000;
/** How long its last report may take to be written before it exits regardless. */
const LAST_REPORT_TIMEOUT_MS = 2_000;
/** A new process that reads nothing does not get reports piled up for it. */
const REPORT_BACKLOG_MAX = 8 * 1024 * 1024;

/**
 * A report as lines of the protocol, each at most `partBytes` (plus its
 * frame): values are cut between lines, never split. A value longer than
 * that alone (no real series comes near) is left out.
 */
export function reportLines(report: readonly CarriedMetric[], partBytes = REPORT_PART_BYTES): string[] {
  const out: string[] = [];
  let part: CarriedMetric[] = [];
  let size = 0;
  const flush = (): void => {
    if (part.length) out.push(JSON.stringify({ event: 'metrics', part }));
    part = [];
    size = 0;
  };
  for (const m of report) {
    const head = Buffer.byteLength(JSON.stringify({ name: m.name, help: m.help, type: m.type, values: [] }));
    let cur: CarriedMetric | undefined;
    for (const v of m.values) {
      const n = Buffer.byteLength(JSON.stringify(v)) + 1;
      if (head + n > partBytes) continue;
      if (!cur || size + n > partBytes) {
        if (size + head + n > partBytes) flush();
        cur = { name: m.name, help: m.help, type: m.type, values: [] };
        part.push(cur);
        size += head;
      }
      cur.values.push(v);
      size += n;
    }
  }
  flush();
  out.push(JSON.stringify({ event: 'metrics-end' }));
  return out;
}

/** The new process's side of reports: parts gathered until metrics-end, bounded. */
export class ReportAssembler {
  #parts = new Map<string, CarriedMetric>();
  #bytes = 0;
  #over = false;
  readonly #maxBytes: number;

  constructor(maxBytes = REPORT_MAX_BYTES) {
    this.#maxBytes = maxBytes;
  }

  /**
   * One line's message (`bytes`: its length). Returns the whole report at
   * its end; 'too-large' when it ended over the bound (the caller keeps the
   * last one); undefined meanwhile or for a message of another kind.
   */
  add(msg: Record<string, unknown>, bytes: number): CarriedMetric[] | 'too-large' | undefined {
    if (msg.event === 'metrics') {
      this.#bytes += bytes;
      if (this.#bytes > this.#maxBytes) this.#over = true;
      if (this.#over || !Array.isArray(msg.part)) return undefined;
      for (const m of msg.part as CarriedMetric[]) {
        if (typeof m?.name !== 'string' || !Array.isArray(m.values) || !['counter', 'histogram', 'gauge'].includes(m.type)) continue;
        const have = this.#parts.get(m.name);
        if (have) have.values.push(...m.values.filter(isValue));
        else this.#parts.set(m.name, { name: m.name, help: String(m.help ?? ''), type: m.type, values: m.values.filter(isValue) });
      }
      return undefined;
    }
    if (msg.event !== 'metrics-end') return undefined;
    const report = this.#over ? 'too-large' : [...this.#parts.values()];
    this.#parts = new Map();
    this.#bytes = 0;
    this.#over = false;
    return report;
  }
}

function isValue(v: unknown): v is CarriedMetric['values'][number] {
  const x = v as CarriedMetric['values'][number] | null;
  return typeof x?.value === 'number' && Number.isFinite(x.value) && typeof x.labels === 'object' && x.labels !== null;
}

function lines(socket: net.Socket, head: Buffer, onLine: (msg: Record<string, unknown>, bytes: number) => void, maxLine = COMMAND_LINE_MAX): void {
  // A decoder, not toString() per chunk: a chunk may end inside a character.
  const text = new StringDecoder('utf8');
  let rest = text.write(head);
  const drain = (): void => {
    let i: number;
    while ((i = rest.indexOf('\n')) >= 0) {
      const line = rest.slice(0, i);
      rest = rest.slice(i + 1);
      try {
        onLine(JSON.parse(line) as Record<string, unknown>, line.length);
      } catch {
        socket.destroy();
        return;
      }
    }
    // A peer that sends a line longer than any message of this protocol is not a proxy.
    if (rest.length > maxLine) socket.destroy();
  };
  socket.on('data', (d: Buffer) => {
    rest += text.write(d);
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
    const reports = reporter(socket, side);
    let handed = false;
    let abortReason = '';
    lines(socket, head, (msg) => {
      if (handed) return;
      if (msg.do === 'hand-over') {
        const drainMs = Number(msg.drainMs);
        if (!Number.isSafeInteger(drainMs) || drainMs < 0) return void socket.destroy();
        handed = true;
        done = true;
        void Promise.resolve(side.handOver(drainMs, () => reports.last())).then(
          (live) => {
            socket.write(JSON.stringify({ event: 'handed-over', live }) + '\n');
            reports.now();
          },
          () => socket.destroy(),
        );
      } else if (msg.do === 'abort') {
        abortReason = typeof msg.reason === 'string' ? msg.reason.slice(0, 1000) : 'aborted';
        socket.end();
      }
    });
    socket.once('close', () => {
      reports.stop();
      if (handed) return;
      busy = false;
      side.resume(abortReason || 'the new process went away before it took over');
    });
  });
}

/**
 * The running side's reports on the lease (see the top of this file): at
 * once, then each REPORT_EVERY_MS when they changed, and last() once
 * drained, which then closes the connection.
 */
function reporter(socket: net.Socket, side: HandoverSide): { now(): void; last(): Promise<void>; stop(): void } {
  let sent = '';
  let building = false;
  let again = false;
  let ended = false;
  const send = async (): Promise<void> => {
    if (!side.report || ended || socket.destroyed) return;
    // One at a time; asked meanwhile (the hand-over's), it runs once more after.
    if (building) return void (again = true);
    building = true;
    try {
      const text = reportLines(await side.report()).join('\n') + '\n';
      if (text !== sent && !ended && !socket.destroyed && socket.writableLength < REPORT_BACKLOG_MAX) {
        socket.write(text);
        sent = text;
      }
    } catch {
      // metrics unreadable now: the next tick tries again
    } finally {
      building = false;
    }
    if (again) {
      again = false;
      await send();
    }
  };
  const timer = setInterval(() => void send(), REPORT_EVERY_MS);
  timer.unref();
  void send();
  const stop = (): void => {
    clearInterval(timer);
    ended = true;
  };
  return {
    now: () => void send(),
    stop,
    last: async () => {
      clearInterval(timer);
      while (building) await new Promise((r) => setTimeout(r, 10));
      await send();
      stop();
      if (socket.destroyed) return;
      // Written (the new process read it, or it is gone), or given up on: this process exits next either way.
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, LAST_REPORT_TIMEOUT_MS);
        t.unref();
        socket.once('close', () => (clearTimeout(t), resolve()));
        socket.end();
      });
    },
  };
}

/** The running (then draining) proxy's reports, as the new process gets them. */
export interface PredecessorReports {
  readonly pid: number;
  /**
   * onReport gets each whole report (the latest at once, if one came
   * already), onGone once the connection closed (it drained and exited,
   * died, or the upgrade was given up), at most once; onRefused a report
   * over REPORT_MAX_BYTES (not taken: the last one stays).
   */
  subscribe(onReport: (report: CarriedMetric[]) => void, onGone: () => void, onRefused?: () => void): void;
}

/** The new process's hold on a prepared proxy. */
export interface UpgradeLease {
  readonly prepared: Prepared;
  readonly reports: PredecessorReports;
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
      const assembler = new ReportAssembler();
      let latest: CarriedMetric[] | undefined;
      let subscriber: { onReport(r: CarriedMetric[]): void; onGone(): void; onRefused?: () => void } | undefined;
      let pid = 0;
      const reports: PredecessorReports = {
        get pid() {
          return pid;
        },
        subscribe(onReport, onGone, onRefused) {
          subscriber = { onReport, onGone, onRefused };
          if (latest) onReport(latest);
          if (closed) onGone();
        },
      };
      socket.once('close', () => subscriber?.onGone());
      waiting = (msg) => {
        if (msg.event !== 'prepared') return;
        clearTimeout(timer);
        waiting = undefined;
        const prepared: Prepared = { pid: Number(msg.pid), nextFlowId: Number(msg.nextFlowId), configVersion: Number(msg.configVersion) };
        pid = prepared.pid;
        resolve({
          prepared,
          reports,
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
      lines(
        socket,
        head,
        (msg, bytes) => {
          const report = assembler.add(msg, bytes);
          if (report === undefined) return waiting?.(msg);
          // Too large: the last one stays (they only grow, so nothing goes down); the next may fit.
          if (report === 'too-large') return subscriber?.onRefused?.();
          latest = report;
          subscriber?.onReport(report);
        },
        REPORT_LINE_MAX,
      );
      socket.once('close', () => {
        if (!waiting) return;
        clearTimeout(timer);
        reject(new UpgradeError('NM_ERR_UPGRADE', `the running proxy on ${socketPath} closed the upgrade connection before it prepared`));
      });
    });
    req.end();
  });
}
