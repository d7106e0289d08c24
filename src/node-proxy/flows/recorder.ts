/**
 * The one place a connection (and, with L7, a request) is written down: its
 * flow in the flow table, its Prometheus counters, and its access-log line.
 * The outbound listener, the tunnel's destination side and the kernel's
 * STRICT drops all record through it, so a flow, its counters and its log
 * line cannot disagree, and every flow that closes has exactly one log line.
 */
import type { Logger } from '../../log';
import type { ConnectionLabels, ProxyMetrics } from '../metrics';
import type { Flow, FlowTable, FlowVerdict, RequestRecord } from './flow-table';

export type AccessLogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'silent';

export interface RecorderOptions {
  node: string;
  flows: FlowTable;
  metrics: ProxyMetrics;
  log: Logger;
  /** pino level of the line written when each connection closes (default info). */
  accessLogLevel?: AccessLogLevel;
}

/** What is known of a connection when it is decided. */
export interface ConnectionFacts {
  source: Flow['source'];
  destination: Flow['destination'];
  security: Flow['security'];
  /** Its metric labels (Istio's names). */
  labels: ConnectionLabels;
}

/** A refused connection's facts; without labels it is not counted in nodemesh_tcp_denied_total (the listener's own counter has it). */
export type RefusedFacts = Omit<ConnectionFacts, 'labels'> & { labels?: ConnectionLabels };

/** A connection that was let through and is open: closed exactly once. */
export class OpenConnection {
  readonly flow: Flow;
  readonly labels: ConnectionLabels;
  readonly #onClose: (conn: OpenConnection, reason: string, sent: number, received: number) => void;
  #closed = false;

  constructor(flow: Flow, labels: ConnectionLabels, onClose: (conn: OpenConnection, reason: string, sent: number, received: number) => void) {
    this.flow = flow;
    this.labels = labels;
    this.#onClose = onClose;
  }

  /** How it ended and the bytes the source sent and received; a second call is ignored. */
  close(reason: string, sent: number, received: number): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#onClose(this, reason, sent, received);
  }
}

export class ConnectionRecorder {
  readonly node: string;
  readonly #o: RecorderOptions;
  readonly #level: AccessLogLevel;

  constructor(opts: RecorderOptions) {
    this.#o = opts;
    this.node = opts.node;
    this.#level = opts.accessLogLevel ?? 'info';
  }

  /**
   * A connection that ends before any byte moved: denied (a policy, REGISTRY_ONLY,
   * the destination), dropped (the kernel) or failed (no origin, no endpoint,
   * a local failure). One flow opened and closed, one count in
   * nodemesh_tcp_denied_total with the reason and policy, one log line.
   */
  refused(facts: RefusedFacts, r: { verdict: Exclude<FlowVerdict, 'allowed'>; reason: string; policy?: string; closeReason?: string }): Flow {
    const { flows, metrics } = this.#o;
    const flow = flows.open({ node: this.node, source: facts.source, destination: facts.destination, verdict: r.verdict, reason: r.reason, policy: r.policy, security: facts.security });
    if (facts.labels) metrics.denied.inc({ ...facts.labels, reason: r.reason, policy: r.policy ?? '' });
    flows.close(flow, r.closeReason ?? (r.verdict === 'denied' ? 'denied' : r.reason), 0, 0);
    this.#accessLog(flow);
    return flow;
  }

  /** A connection let through (allowed, or passed through): its flow opens, counted opened and active. */
  opened(facts: ConnectionFacts, r: { reason: string; policy?: string }): OpenConnection {
    const { flows, metrics } = this.#o;
    const flow = flows.open({ node: this.node, source: facts.source, destination: facts.destination, verdict: 'allowed', reason: r.reason, policy: r.policy, security: facts.security });
    metrics.opened.inc(facts.labels);
    metrics.active.inc();
    return new OpenConnection(flow, facts.labels, this.#closedOne);
  }

  /**
   * One request on an open connection (L7): on its flow (a count and the
   * table's recent requests), in nodemesh_requests_total and the request
   * duration histogram, and at debug in the log.
   */
  request(conn: OpenConnection, req: Omit<RequestRecord, 'flow' | 'end'>): void {
    const { flows, metrics } = this.#o;
    flows.request(conn.flow, req);
    const labels = { ...conn.labels, request_protocol: req.protocol, response_code: String(req.status), grpc_response_status: req.grpcStatus === undefined ? '' : String(req.grpcStatus) };
    metrics.requests.inc(labels);
    metrics.requestDuration.observe(labels, req.durationMs);
    this.#o.log.debug({ access: true, flow: conn.flow.id, method: req.method, authority: req.authority, path: req.path, status: req.status, route: req.route, ms: req.durationMs }, 'request');
  }

  /** What OpenConnection.close() records, once (one function for every connection, not a closure each). */
  readonly #closedOne = (conn: OpenConnection, reason: string, sent: number, received: number): void => {
    const { flows, metrics } = this.#o;
    metrics.active.dec();
    metrics.closed.inc(conn.labels);
    metrics.sent.inc(conn.labels, sent);
    metrics.received.inc(conn.labels, received);
    flows.close(conn.flow, reason, sent, received);
    this.#accessLog(conn.flow);
  };

  /** One line per connection, when it closes (denied ones too). */
  #accessLog(f: Flow): void {
    if (this.#level === 'silent') return;
    this.#o.log[this.#level](
      {
        access: true,
        flow: f.id,
        src: `${f.source.namespace ?? '-'}/${f.source.workload ?? '-'}`,
        srcAddr: `${f.source.ip}:${f.source.port}`,
        service: f.destination.service,
        dst: f.destination.address || f.destination.originalAddress,
        verdict: f.verdict,
        reason: f.reason,
        policy: f.policy,
        sent: f.bytesSent,
        received: f.bytesReceived,
        ms: f.durationMs,
        close: f.closeReason,
        ...(f.requests ? { requests: f.requests } : {}),
      },
      'connection',
    );
  }
}
