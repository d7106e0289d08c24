/**
 * One record per connection the proxy handled: live ones, and a bounded ring
 * of recent closed ones. Readers get copies; followers get each record as it
 * opens and closes.
 */
export type FlowVerdict = 'allowed' | 'denied' | 'dropped' | 'error';

export interface Flow {
  id: number;
  node: string;
  start: string;
  end?: string;
  durationMs?: number;
  source: { workload?: string; namespace?: string; identity?: string; ip: string; port: number };
  destination: { service?: string; workload?: string; namespace?: string; identity?: string; address: string; originalAddress: string };
  verdict: FlowVerdict;
  /** Why: allowed-by-policy, no-allow-policy, explicit-deny, not-allowed, registry-only, passthrough, no-endpoint, connect-failed… */
  reason: string;
  /** ns/name of the policy that decided, if any. */
  policy?: string;
  bytesSent: number;
  bytesReceived: number;
  /** How it ended: closed, reset, idle-timeout, connect-timeout, denied, error: … */
  closeReason?: string;
  security: 'none' | 'mutual_tls';
  /** Requests (L7) seen on this connection so far; absent on a connection carried as bytes. */
  requests?: number;
  /** Set by /flows on a flow an upgrade's draining predecessor carries (admin/draining.ts): that process's pid. */
  drainingPid?: number;
}

/** One HTTP or gRPC request on a connection (the L7 layer records it through the ConnectionRecorder). */
export interface RequestRecord {
  /** The connection's flow id. */
  flow: number;
  /** When it ended (ISO time). */
  end: string;
  protocol: 'http/1.1' | 'h2' | 'grpc';
  method: string;
  authority: string;
  path: string;
  /** The HTTP status sent to the client (0: none, the stream was reset). */
  status: number;
  grpcStatus?: number;
  /** ns/name of the HTTPRoute or GRPCRoute that routed it. */
  route?: string;
  /** Why it ended as it did: a policy's denial, a timeout, retries exhausted… */
  reason?: string;
  /** ns/name of the policy that decided, for a denial. */
  policy?: string;
  /** Attempts made upstream (1 without retries). */
  attempts?: number;
  durationMs: number;
}

export interface FlowFilter {
  /** Source workload name (or pod name). */
  from?: string;
  /** Destination service name (or workload name). */
  to?: string;
  verdict?: FlowVerdict;
  live?: boolean;
}

export function matchesFlow(f: Flow, q: FlowFilter): boolean {
  if (q.from && f.source.workload !== q.from) return false;
  if (q.to && f.destination.service !== q.to && f.destination.workload !== q.to) return false;
  if (q.verdict && f.verdict !== q.verdict) return false;
  if (q.live !== undefined && (f.end === undefined) !== q.live) return false;
  return true;
}

export type FlowEvent = { event: 'open' | 'close'; flow: Flow } | { event: 'request'; flow: Flow; request: RequestRecord };

export class FlowTable {
  readonly #live = new Map<number, Flow>();
  readonly #recent: Flow[] = [];
  readonly #capacity: number;
  /** The last requests, a ring as #recent is: a busy L7 connection must not grow its flow. */
  readonly #requests: RequestRecord[] = [];
  #requestHead = 0;
  #nextId = 1;
  #head = 0;
  #closedCount = 0;
  readonly #followers = new Set<(e: FlowEvent) => void>();

  /**
   * `capacity`: closed flows kept. Each costs about 1.4 KB of heap (its
   * facts, labels and time strings): 10,000 held 14 MB after a wave of
   * idle connections closed, most of a proxy's idle heap.
   */
  constructor(capacity = 1_000) {
    this.#capacity = capacity;
  }

  /** The id the next flow gets. */
  get nextId(): number {
    return this.#nextId;
  }

  /** Continues after another table's ids (an upgrade: the old process's flows keep theirs). */
  continueFrom(id: number): void {
    if (Number.isSafeInteger(id) && id > this.#nextId) this.#nextId = id;
  }

  get liveCount(): number {
    return this.#live.size;
  }

  /** Flows closed since start (a counter: it only grows). */
  get closedCount(): number {
    return this.#closedCount;
  }

  open(init: Omit<Flow, 'id' | 'start' | 'bytesSent' | 'bytesReceived'>): Flow {
    const flow: Flow = { ...init, id: this.#nextId++, start: new Date().toISOString(), bytesSent: 0, bytesReceived: 0 };
    this.#live.set(flow.id, flow);
    this.#emit('open', flow);
    return flow;
  }

  close(flow: Flow, closeReason: string, bytesSent: number, bytesReceived: number): void {
    if (!this.#live.delete(flow.id)) return;
    this.#closedCount++;
    const end = new Date();
    flow.end = end.toISOString();
    flow.durationMs = end.getTime() - Date.parse(flow.start);
    flow.closeReason = closeReason;
    flow.bytesSent = bytesSent;
    flow.bytesReceived = bytesReceived;
    if (this.#recent.length < this.#capacity) this.#recent.push(flow);
    else {
      this.#recent[this.#head] = flow;
      this.#head = (this.#head + 1) % this.#capacity;
    }
    this.#emit('close', flow);
  }

  /** A request on a live flow: counted on it, kept among the recent requests, sent to followers. */
  request(flow: Flow, r: Omit<RequestRecord, 'flow' | 'end'>): RequestRecord {
    const record: RequestRecord = { ...r, flow: flow.id, end: new Date().toISOString() };
    flow.requests = (flow.requests ?? 0) + 1;
    if (this.#requests.length < this.#capacity) this.#requests.push(record);
    else {
      this.#requests[this.#requestHead] = record;
      this.#requestHead = (this.#requestHead + 1) % this.#capacity;
    }
    if (this.#followers.size > 0) {
      const e: FlowEvent = { event: 'request', flow: structuredClone(flow), request: { ...record } };
      for (const f of this.#followers) f(e);
    }
    return record;
  }

  /** The most recent requests, oldest first, optionally of one flow. */
  recentRequests(limit = 1000, flow?: number): RequestRecord[] {
    const ring = this.#requests.length < this.#capacity ? this.#requests : [...this.#requests.slice(this.#requestHead), ...this.#requests.slice(0, this.#requestHead)];
    const picked = flow === undefined ? ring : ring.filter((r) => r.flow === flow);
    return picked.slice(-limit).map((r) => ({ ...r }));
  }

  /** Live and recent flows, oldest first, filtered. */
  list(q: FlowFilter = {}, limit = 1000): Flow[] {
    const recent = this.#recent.length < this.#capacity ? this.#recent : [...this.#recent.slice(this.#head), ...this.#recent.slice(0, this.#head)];
    const all = [...recent, ...this.#live.values()].filter((f) => matchesFlow(f, q));
    return all.slice(-limit).map((f) => structuredClone(f));
  }

  follow(fn: (e: FlowEvent) => void): () => void {
    this.#followers.add(fn);
    return () => this.#followers.delete(fn);
  }

  #emit(event: 'open' | 'close', flow: Flow): void {
    if (this.#followers.size === 0) return;
    const copy = structuredClone(flow);
    for (const f of this.#followers) f({ event, flow: copy });
  }
}
