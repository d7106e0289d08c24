/** The controller's Prometheus metrics (one prom-client registry per process) and its 15014 endpoint. */
import * as http from 'node:http';
import type * as net from 'node:net';

import * as prom from 'prom-client';

import { AdmissionTable, peerKey } from '../net';
import { ADMISSION_REFUSAL, type ListenerLimits, type Refusal, type Refusals } from './listen';

export class ControllerMetrics {
  readonly registry = new prom.Registry();
  readonly apiRequests = new prom.Counter({
    name: 'nodemesh_controller_api_requests_total',
    help: 'gRPC calls to the controller, by method and status code',
    labelNames: ['method', 'code'] as const,
    registers: [this.registry],
  });
  readonly nodeStreamEnds = new prom.Counter({
    name: 'nodemesh_controller_node_stream_ends_total',
    help: 'Node config streams ended, by gRPC code and reason (a fixed set: node-ended, node-cancelled, replaced, revoked, too-large, hello-timeout, bad-hello, not-a-node, controller-stopping, controller-closed, send-failed, node-error, internal)',
    labelNames: ['code', 'reason'] as const,
    registers: [this.registry],
  });
  readonly connectedNodes = new prom.Gauge({
    name: 'nodemesh_controller_connected_nodes',
    help: 'Node config streams open now',
    registers: [this.registry],
  });
  readonly pushSeconds = new prom.Histogram({
    name: 'nodemesh_controller_push_seconds',
    help: 'From a committed write to the node acknowledging the config version it produced',
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [this.registry],
  });
  readonly storeVersion = new prom.Gauge({
    name: 'nodemesh_controller_store_version',
    help: 'The store version of the latest acknowledged write',
    registers: [this.registry],
  });
  readonly nacks = new prom.Counter({
    name: 'nodemesh_controller_config_nacks_total',
    help: 'Config versions a node refused',
    labelNames: ['node'] as const,
    registers: [this.registry],
  });
  readonly configBytesSent = new prom.Counter({
    name: 'nodemesh_controller_config_sent_bytes_total',
    help: 'Bytes of config stream messages sent to nodes, by type (snapshot, delta), as serialized',
    labelNames: ['type'] as const,
    registers: [this.registry],
  });
  readonly configResyncs = new prom.Counter({
    name: 'nodemesh_controller_config_resyncs_total',
    help: 'Times a node fell so far behind that its queued deltas were replaced by a fresh snapshot',
    registers: [this.registry],
  });
  readonly configRefused = new prom.Counter({
    name: 'nodemesh_controller_config_refused_total',
    help: "Node streams ended because an item of the node's config does not fit the node's message limit",
    registers: [this.registry],
  });
  readonly certificatesIssued = new prom.Counter({
    name: 'nodemesh_controller_certificates_issued_total',
    help: 'Certificates signed, by kind (workload, node)',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });
  readonly certificatesRefused = new prom.Counter({
    name: 'nodemesh_controller_certificates_refused_total',
    help: 'Certificate requests refused, by kind',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });
  readonly nodesRevoked = new prom.Counter({
    name: 'nodemesh_controller_nodes_revoked_total',
    help: 'Nodes revoked (nodemesh node revoke)',
    registers: [this.registry],
  });
  readonly revokedCertificates = new prom.Gauge({
    name: 'nodemesh_controller_revoked_certificates',
    help: 'Serials on the revocation list pushed to every node (revoked and not yet expired)',
    registers: [this.registry],
  });

  readonly listenerRejected = new prom.Counter({
    name: 'nodemesh_controller_listener_rejected_total',
    help: 'Connections or sessions a listener refused or closed to protect itself, by listener (grpc, metrics) and reason',
    labelNames: ['listener', 'reason'] as const,
    registers: [this.registry],
  });
  readonly listenerConnections = new prom.Gauge({
    name: 'nodemesh_controller_listener_connections',
    help: 'Connections open now, by listener',
    labelNames: ['listener'] as const,
    registers: [this.registry],
  });
  readonly listenerHandshakes = new prom.Gauge({
    name: 'nodemesh_controller_listener_handshakes',
    help: 'TLS handshakes in progress now, by listener',
    labelNames: ['listener'] as const,
    registers: [this.registry],
  });
  readonly unhandledErrors = new prom.Counter({
    name: 'nodemesh_controller_unhandled_errors_total',
    help: 'Errors no handler caught (controller bugs), by kind: rejection (logged, still serving) or exception (the process exits)',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });

  constructor() {
    prom.collectDefaultMetrics({ register: this.registry, prefix: 'nodemesh_controller_' });
  }
}

/**
 * Serves /metrics, /healthz and /readyz (GET only), resolving once listening.
 * Connections are admitted per peer and in total; a request must arrive
 * whole within the request timeout and an idle connection is closed, so
 * slow or silent clients cannot hold the port.
 */
export async function serveMetrics(
  metrics: ControllerMetrics,
  host: string,
  port: number,
  ready: () => boolean,
  limits: ListenerLimits,
  refusals: Refusals,
): Promise<http.Server> {
  const table = new AdmissionTable(limits.metricsMaxConnections, limits.metricsMaxConnectionsPerPeer);
  const server = http.createServer(
    {
      headersTimeout: limits.metricsHeadersTimeoutMs,
      requestTimeout: limits.metricsRequestTimeoutMs,
      // The expiry check runs on this period, so it bounds how late a timeout is noticed.
      connectionsCheckingInterval: Math.max(100, Math.min(1000, Math.floor(limits.metricsHeadersTimeoutMs / 4))),
      keepAliveTimeout: 5000,
      maxHeaderSize: 8192,
    },
    (req, res) => {
      const url = req.url ?? '/';
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD', connection: 'close' });
        res.end();
      } else if (url === '/metrics') {
        metrics.registry.metrics().then(
          (body) => {
            res.writeHead(200, { 'content-type': metrics.registry.contentType });
            res.end(body);
          },
          (err: Error) => {
            res.writeHead(500);
            res.end(err.message);
          },
        );
      } else if (url === '/healthz' || url === '/readyz') {
        const ok = url === '/healthz' || ready();
        res.writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' });
        res.end(ok ? 'ok\n' : 'not ready\n');
      } else {
        res.writeHead(404);
        res.end();
      }
    },
  );
  server.timeout = limits.metricsIdleTimeoutMs;
  const report = (): void => metrics.listenerConnections.set({ listener: 'metrics' }, table.size);
  // Before http's own listener: a refused socket never reaches the parser.
  server.prependListener('connection', (socket: net.Socket) => {
    const peer = peerKey(socket.remoteAddress);
    const a = table.admit(peer);
    socket.on('error', () => {});
    if (!a.admitted) {
      refusals.note('metrics', ADMISSION_REFUSAL[a.reason], socket.remoteAddress ?? 'unknown');
      socket.destroy();
      return;
    }
    report();
    socket.once('close', () => {
      table.release(peer);
      report();
    });
  });
  server.on('timeout', (socket: net.Socket) => {
    refusals.note('metrics', 'idle_timeout', socket.remoteAddress ?? 'unknown');
    socket.destroy();
  });
  // A socket already answered 408/400 reports its end as another parse error: count it once.
  const answered = new WeakSet<net.Socket>();
  server.on('clientError', (err: NodeJS.ErrnoException, socket: net.Socket) => {
    if (socket.destroyed || answered.has(socket)) return;
    answered.add(socket);
    const reason: Refusal = err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 'request_timeout' : 'bad_request';
    if (err.code !== 'ECONNRESET') refusals.note('metrics', reason, socket.remoteAddress ?? 'unknown', err.code);
    if (socket.writable) socket.end(reason === 'request_timeout' ? 'HTTP/1.1 408 Request Timeout\r\nconnection: close\r\n\r\n' : 'HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n');
    // The answer is a courtesy: a client that does not read it loses the socket anyway.
    setTimeout(() => socket.destroy(), 1000).unref();
  });
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(port, host, resolve));
  report();
  return server;
}
