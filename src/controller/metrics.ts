/** The controller's Prometheus metrics (one prom-client registry per process) and its 15014 endpoint. */
import * as http from 'node:http';

import * as prom from 'prom-client';

export class ControllerMetrics {
  readonly registry = new prom.Registry();
  readonly apiRequests = new prom.Counter({
    name: 'nodemesh_controller_api_requests_total',
    help: 'gRPC calls to the controller, by method and status code',
    labelNames: ['method', 'code'] as const,
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

  constructor() {
    prom.collectDefaultMetrics({ register: this.registry, prefix: 'nodemesh_controller_' });
  }
}

/** Serves /metrics, /healthz and /readyz. Resolves once listening. */
export async function serveMetrics(metrics: ControllerMetrics, host: string, port: number, ready: () => boolean): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    const url = req.url ?? '/';
    if (url === '/metrics') {
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
  });
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(port, host, resolve));
  return server;
}
