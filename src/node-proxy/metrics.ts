/**
 * The proxy's Prometheus metrics, with Istio's label names so dashboards port
 * (source_workload, destination_service, connection_security_policy, …).
 */
import * as prom from 'prom-client';

import type { FastPath } from './datapath/fastpath';

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

/** One metric as registry.getMetricsAsJSON() gives it. */
type MetricJson = Awaited<ReturnType<prom.Registry['getMetricsAsJSON']>>[number];

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
  /** Each draining predecessor's latest report, by pid (see carriedMetrics). */
  readonly #predecessors = new Map<number, CarriedMetric[]>();

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

  /** Exports the same-node fast path's counters (../datapath/fastpath), read at each scrape. */
  fastPath(fp: FastPath): void {
    new prom.Gauge({
      name: 'nodemesh_fastpath_connections',
      help: 'Same-node connections copied by the kernel now',
      registers: [this.registry],
      collect() {
        this.set(fp.open);
      },
    });
    new prom.Counter({
      name: 'nodemesh_fastpath_joined_total',
      help: 'Same-node connections handed to the kernel to copy',
      registers: [this.registry],
      collect() {
        this.reset();
        this.inc(fp.stats().joined);
      },
    });
    new prom.Counter({
      name: 'nodemesh_fastpath_fallback_total',
      help: 'Same-node connections the proxy copied itself because the kernel could not take them (buffered: bytes already waiting in the proxy; full: the fast path holds its maximum; no-fd, error)',
      labelNames: ['reason'] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const [reason, n] of Object.entries(fp.stats().fallback)) this.inc({ reason }, n);
      },
    });
    new prom.Counter({
      name: 'nodemesh_fastpath_proxied_total',
      help: 'Fast-path connections of which a direction went back to the proxy: its reader was slower than the kernel may queue for it (1 MiB)',
      registers: [this.registry],
      collect() {
        this.reset();
        this.inc(fp.stats().proxied);
      },
    });
  }

  /** An upgrade's predecessor reported its totals so far (each report replaces its last: they only grow). */
  fromPredecessor(pid: number, report: CarriedMetric[]): void {
    this.#predecessors.set(pid, report);
  }

  /**
   * The predecessor's reports ended (it drained and exited, or died): its
   * totals stay part of this process's for good; its gauges go, since none
   * of its connections is open any more, or nobody can tell.
   */
  predecessorGone(pid: number): void {
    const last = this.#predecessors.get(pid);
    if (last) this.#predecessors.set(pid, last.filter((m) => m.type !== 'gauge'));
  }

  /** This process's metrics with its predecessors' added in: what /metrics shows. */
  async merged(): Promise<prom.Registry> {
    if (this.#predecessors.size === 0) return this.registry;
    return mergeMetrics(await this.registry.getMetricsAsJSON(), [...this.#predecessors.values()]);
  }

  /** The Prometheus text of merged(). */
  async exposition(): Promise<{ contentType: string; body: string }> {
    const r = await this.merged();
    return { contentType: r.contentType, body: await r.metrics() };
  }

  /** What this process hands its successor: its carried metrics, its own predecessors' included (an upgrade of an upgrade). */
  async report(): Promise<CarriedMetric[]> {
    return carriedMetrics(await (await this.merged()).getMetricsAsJSON());
  }
}

/** One metric as an upgrade's predecessor reports it: registry.getMetricsAsJSON()'s shape, as plain JSON. */
export interface CarriedMetric {
  name: string;
  help: string;
  type: 'counter' | 'histogram' | 'gauge';
  /** Histograms: one value per `_bucket` (with `le`), `_sum` and `_count`, named by metricName. */
  values: { value: number; labels: Record<string, string | number>; metricName?: string }[];
}

/** Gauges that count connections: a draining predecessor's still-open ones are the node's too. Its other gauges are its own state. */
const CARRIED_GAUGES: ReadonlySet<string> = new Set(['nodemesh_tcp_active_connections', 'nodemesh_listener_open_connections']);

/**
 * What carries over an upgrade (docs/architecture.md, 'Upgrades that drop
 * nothing'): every counter and histogram of the node's traffic, and the
 * connection gauges; not the per-process nodemesh_proxy_* metrics (CPU,
 * memory, event loop: the new process's own), nor the other gauges.
 */
export function carriedMetrics(all: readonly MetricJson[]): CarriedMetric[] {
  const out: CarriedMetric[] = [];
  for (const m of all) {
    const kind = String(m.type);
    const carried = kind === 'gauge' ? CARRIED_GAUGES.has(m.name) : (kind === 'counter' || kind === 'histogram') && !m.name.startsWith('nodemesh_proxy_');
    if (!carried || m.values.length === 0) continue;
    out.push({
      name: m.name,
      help: m.help,
      type: kind as CarriedMetric['type'],
      values: m.values.map((v) => {
        const named = v as { metricName?: string };
        return { value: v.value, labels: { ...(v.labels as Record<string, string | number>) }, ...(named.metricName ? { metricName: named.metricName } : {}) };
      }),
    });
  }
  return out;
}

/**
 * `own` with each predecessor report added in, series by series (name and
 * labels; a histogram's buckets, sum and count alike), through prom-client's
 * own aggregation of several processes' metrics. A reported metric this
 * process does not have, or has as another type (a predecessor of another
 * version), is left out rather than shown wrong.
 */
export function mergeMetrics(own: readonly MetricJson[], predecessors: readonly CarriedMetric[][]): prom.Registry {
  const types = new Map(own.map((m) => [m.name, String(m.type)]));
  const isCarried = new Set(predecessors.flat().filter((m) => types.get(m.name) === m.type).map((m) => m.name));
  // Summed where carried; the rest is this process's alone ('first' of one, also for the metrics prom-client would omit).
  const mine = own.map((m) => ({ ...m, aggregator: isCarried.has(m.name) ? 'sum' : 'first' }) as MetricJson);
  const theirs = predecessors.map((report) =>
    report.filter((m) => isCarried.has(m.name)).map((m) => ({ ...m, aggregator: 'sum' }) as unknown as MetricJson),
  );
  return prom.AggregatorRegistry.aggregate([mine, ...theirs]);
}
