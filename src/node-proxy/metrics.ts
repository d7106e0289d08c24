/**
 * The proxy's Prometheus metrics, with Istio's label names so dashboards port
 * (source_workload, destination_service, connection_security_policy, …).
 */
import * as prom from 'prom-client';

export const CONNECTION_LABELS = [
  'reporter',
  'source_workload',
  'source_namespace',
  'source_principal',
  'destination_service',
  'destination_service_namespace',
  'destination_workload',
  'destination_namespace',
  'connection_security_policy',
] as const;
export type ConnectionLabels = Record<(typeof CONNECTION_LABELS)[number], string>;

/** A request's labels beyond its connection's (Istio's istio_requests_total has these too). */
export const REQUEST_LABELS = [...CONNECTION_LABELS, 'request_protocol', 'response_code', 'grpc_response_status'] as const;

/** Connection labels with 'unknown' for whatever `known` does not say. */
export function connectionLabels(known: Partial<ConnectionLabels>): ConnectionLabels {
  const out = {} as ConnectionLabels;
  for (const k of CONNECTION_LABELS) out[k] = known[k] ?? 'unknown';
  return out;
}

export class ProxyMetrics {
  readonly registry = new prom.Registry();
  readonly opened = new prom.Counter({ name: 'nodemesh_tcp_connections_opened_total', help: 'TCP connections the proxy opened to a destination', labelNames: CONNECTION_LABELS, registers: [this.registry] });
  readonly closed = new prom.Counter({ name: 'nodemesh_tcp_connections_closed_total', help: 'TCP connections closed', labelNames: CONNECTION_LABELS, registers: [this.registry] });
  readonly sent = new prom.Counter({ name: 'nodemesh_tcp_sent_bytes_total', help: 'Bytes the source sent', labelNames: CONNECTION_LABELS, registers: [this.registry] });
  readonly received = new prom.Counter({ name: 'nodemesh_tcp_received_bytes_total', help: 'Bytes the source received', labelNames: CONNECTION_LABELS, registers: [this.registry] });
  readonly denied = new prom.Counter({
    name: 'nodemesh_tcp_denied_total',
    help: 'Connections refused: by an authorization policy, REGISTRY_ONLY, or for want of an endpoint',
    labelNames: [...CONNECTION_LABELS, 'reason', 'policy'] as const,
    registers: [this.registry],
  });
  /** L7: one count per request the proxy answered, by its connection's labels and its outcome. */
  readonly requests = new prom.Counter({ name: 'nodemesh_requests_total', help: 'HTTP and gRPC requests the proxy handled', labelNames: REQUEST_LABELS, registers: [this.registry] });
  readonly requestDuration = new prom.Histogram({
    name: 'nodemesh_request_duration_milliseconds',
    help: 'Time from a request to the end of its response, as the client saw it through the proxy',
    labelNames: REQUEST_LABELS,
    buckets: [0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000],
    registers: [this.registry],
  });
  readonly active = new prom.Gauge({ name: 'nodemesh_tcp_active_connections', help: 'Connections open now', registers: [this.registry] });
  readonly configVersion = new prom.Gauge({ name: 'nodemesh_proxy_config_version', help: 'Config version applied', registers: [this.registry] });
  readonly ready = new prom.Gauge({ name: 'nodemesh_proxy_ready', help: '1 once config and data path are in place', registers: [this.registry] });
  readonly certExpiry = new prom.Gauge({ name: 'nodemesh_workload_certificate_expiry_seconds', help: 'When each workload certificate expires (Unix seconds)', labelNames: ['identity'] as const, registers: [this.registry] });
  readonly certRenewals = new prom.Counter({ name: 'nodemesh_workload_certificate_renewals_total', help: 'Workload certificates renewed', labelNames: ['identity'] as const, registers: [this.registry] });
  readonly certFailures = new prom.Counter({ name: 'nodemesh_workload_certificate_failures_total', help: 'Workload certificate requests that failed (retried with backoff)', registers: [this.registry] });
  readonly listenerAccepted = new prom.Counter({ name: 'nodemesh_listener_accepted_total', help: 'Connections each listener admitted', labelNames: ['listener'] as const, registers: [this.registry] });
  readonly listenerRejected = new prom.Counter({
    name: 'nodemesh_listener_rejected_total',
    help: 'Connections a listener refused or cut, by reason (total, per-peer, handshake-timeout, h2-resets, http-timeout, ...)',
    labelNames: ['listener', 'reason'] as const,
    registers: [this.registry],
  });
  readonly listenerOpen = new prom.Gauge({ name: 'nodemesh_listener_open_connections', help: 'Connections each listener holds now', labelNames: ['listener'] as const, registers: [this.registry] });

  constructor(datapathCounters?: () => Record<string, bigint>) {
    prom.collectDefaultMetrics({ register: this.registry, prefix: 'nodemesh_proxy_' });
    if (datapathCounters) {
      new prom.Gauge({
        name: 'nodemesh_datapath_events',
        help:
          'Data path counters from the kernel (redirected, excluded, proxy_down: connects while no proxy was ready, refused unless also in proxy_down_open: let around the proxy by fail open, proxy_stale: of proxy_down, those where the proxy was marked ready but its heartbeat had stopped, lookup_miss, map_full, closed, strict_drop; not_enrolled is no longer counted)',
        labelNames: ['counter'] as const,
        registers: [this.registry],
        collect() {
          try {
            for (const [k, v] of Object.entries(datapathCounters())) this.set({ counter: k }, Number(v));
          } catch {
            // the data path is gone (shutting down): report nothing
          }
        },
      });
    }
  }
}
