/**
 * The node proxy (see docs/architecture.md, 'The node proxy'): joins the
 * controller (bootstrap token -> node certificate), installs or adopts the
 * data path, follows its config stream, enrolls the node's workloads, serves
 * outbound connections on 15001 and tunnels from other nodes on 15008.
 * Ready (data path marked ready, /healthz/ready 200) only once config and
 * data path are in place. While the controller is away it keeps serving the
 * last config and reconnects with backoff.
 *
 * No serving before policy (see docs/architecture.md, 'No serving before
 * policy'): 15001 and 15008 listen only once a validated config is held,
 * from the controller or, when it does not answer within controllerWaitMs,
 * the last one this node ACKed, kept in its state dir.
 *
 * An upgrade hands over from one process to the next without dropping a
 * connection (docs/architecture.md, 'Upgrades that drop nothing').
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

import { parseIp } from '../api/address';
import { MeshError } from '../errors';
import { readOpenFileLimit } from '../net';
import { silentLogger, type Logger } from '../log';
import { VERSION } from '../version';
import { startAdmin, type AdminHandle, type HandoverSide, type LiveAtHandover, type PredecessorReports, type Prepared } from './admin';
import { abi } from '../bpf';
import { Datapath, DEFAULT_WATCHDOG_MS, failMode, HEARTBEAT_MS, type FlowRecord } from './datapath';
import { FastPath } from './datapath/fastpath';
import { ConnectionRecorder, FlowTable } from './flows';
import { MemoryReclaimer } from './memory-reclaim';
import { NodeSession, WORKLOAD_CERTS_FILE, WorkloadCertificates } from './identity';
import { inboundServer } from './inbound';
import { fdBudget, fdBudgetProblem, LISTENER_DEFAULTS, ListenerReporter, type ListenerLimits } from './listeners';
import { HbonePool, TunnelError, type HboneServer } from './tunnel';
import { connectionLabels, ProxyMetrics } from './metrics';
import { BalancerCache, DialGuard, OutboundServer } from './outbound';
import { ClientAddressDelivery, UpstreamConnector } from './upstream';
import { applyLastGood, ConfigStream, describeLink, LastGoodError, LastGoodStore, removeStaleTemps, StateUpdater, type MeshView } from './state';
import { ConfigState } from './state';
import type { CompiledPolicySet } from './policy';

export interface ProxyOptions {
  node: string;
  /** Controller address IP:PORT. */
  controller: string;
  /** Bootstrap token (read from a file or the environment, never argv): needed only when the state dir holds no valid node certificate. */
  token?: string;
  /** The controller's CA (PEM file), to trust it when joining. */
  caFile?: string;
  stateDir: string;
  /** cgroup v2 directory the data path attaches to (default: the cgroup2 root, capture by netns). */
  cgroup?: string;
  proxyIp: string;
  proxyIp6?: string;
  /**
   * Let this node's pods connect around the proxy while none is ready
   * (`--fail-open`). Default false: fail closed, their connects are refused
   * (EPERM) until a proxy is ready; MeshConfig failOpen picks workloads.
   */
  failOpen?: boolean;
  /**
   * Where this node's pods see their clients connect from (`--deliver-from`):
   * 'client' (default) their own addresses, 'proxy' the proxy's.
   */
  deliverFrom?: 'client' | 'proxy';
  /** The kernel counts the proxy gone once its heartbeat is this old (default DEFAULT_WATCHDOG_MS; 0: no watchdog). */
  watchdogMs?: number;
  outboundPort?: number;
  /** Tunnel port other nodes' proxies connect to (15008). */
  tunnelPort?: number;
  adminPort?: number;
  metricsPort?: number;
  healthPort?: number;
  /** Admin API unix socket (default <stateDir>/admin.sock). */
  adminSocket?: string;
  connectTimeoutMs?: number;
  idleTimeoutMs?: number;
  accessLogLevel?: 'trace' | 'debug' | 'info' | 'warn' | 'silent';
  /** Every listener's bounds (default LISTENER_DEFAULTS; build with listenerLimits()). */
  limits?: Readonly<ListenerLimits>;
  /** Items of config this node holds at most (default LIMITS.maxNodeConfigItems). */
  maxConfigItems?: number;
  /** How long to wait for the controller's first config before serving the last one kept in the state dir (default PROXY_DEFAULTS.controllerWaitMs). */
  controllerWaitMs?: number;
  /** A burst of config versions within this is written to the state dir once (default 1 s). */
  configSaveDelayMs?: number;
  /**
   * This process replaces a running proxy of the node (`nodemesh proxy
   * --upgrade`): what that one said when it prepared, and its metric
   * reports, added to this one's until it exits.
   */
  upgrade?: Pick<Prepared, 'nextFlowId'> & { reports?: PredecessorReports };
  log?: Logger;
}

/**
 * Flow ids the old process may still give between its prepare and its
 * hand-over (it accepts beside the new one meanwhile): the new one starts
 * after them, so no id names two flows.
 */
export const UPGRADE_FLOW_ID_GAP = 1_000_000;

const TCP_MIGRATE_REQ = '/proc/sys/net/ipv4/tcp_migrate_req';

export class ProxyError extends MeshError {}

export const PROXY_DEFAULTS = Object.freeze({
  /** Long enough for a controller that is up to answer, short enough that a node whose controller is down serves its last config soon. */
  controllerWaitMs: 2_500,
});

/** Where the config the proxy serves came from. */
export type ConfigSource = 'none' | 'controller' | 'disk';

/**
 * Why `ip` cannot be this proxy's address: not an address of this network
 * namespace (the data path would send every pod connection to a port nobody
 * listens on), or undefined when it is one.
 */
export function proxyAddressProblem(flag: string, ip: string, family: 4 | 6): string | undefined {
  if (net.isIP(ip) !== family) return `${flag} ${JSON.stringify(ip)} is not an IPv${family} address`;
  const own = Object.values(os.networkInterfaces())
    .flat()
    .filter((i): i is os.NetworkInterfaceInfo => i !== undefined && (family === 4 ? i.family === 'IPv4' : i.family === 'IPv6'))
    .map((i) => i.address);
  const want = parseIp(ip)!.n;
  if (own.some((a) => parseIp(a)?.n === want)) return undefined;
  return (
    `${flag} ${ip} is not an address of this network namespace (it has ${own.length ? own.join(', ') : `no IPv${family} address`}): ` +
    `pods would be redirected to a port nobody listens on; give this node's own address (in the lab, \`nodemesh lab up\` passes it)`
  );
}

export class NodeProxy {
  readonly node: string;
  readonly flows = new FlowTable();
  readonly state: ConfigState;
  /** The lookups, compiled policies and enrollment, kept from the config state in one place. */
  readonly #updater: StateUpdater;
  #ready = false;
  readonly #log: Logger;
  readonly #opts: ProxyOptions;
  #datapath!: Datapath;
  /** The same-node fast path, or undefined where the kernel cannot (the proxy copies those connections). */
  #fastPath: FastPath | undefined;
  /** Why there is no fast path, for /status. */
  #fastPathError = '';
  /** The policy set open connections were last asked about (#onCommit). */
  #policiesAsked: CompiledPolicySet | undefined;
  #session!: NodeSession;
  #stream!: ConfigStream;
  #outbound!: OutboundServer;
  #recorder!: ConnectionRecorder;
  #admin!: AdminHandle;
  #metrics!: ProxyMetrics;
  readonly #balancers: BalancerCache;
  /** Delivery to this node's pods from their clients' addresses. */
  readonly #delivery: ClientAddressDelivery;
  #certs!: WorkloadCertificates;
  readonly #pool = new HbonePool();
  #inbound: HboneServer | undefined;
  #events: { close(): void } | undefined;
  #heartbeat: NodeJS.Timeout | undefined;
  #reclaimer: MemoryReclaimer | undefined;
  #lastGood!: LastGoodStore;
  #source: ConfigSource = 'none';
  /** Why the kept config is not served, when it is not. */
  #lastGoodError = '';
  /** Whether close() may clear the data path's ready flag: not while an upgrade's new process has not taken over, nor once this one handed over. */
  #holdsReady: boolean;
  #handedOver = false;
  #retire!: () => void;
  /** Resolves once this process handed over to a new one and drained (the CLI then exits). */
  readonly retired = new Promise<void>((resolve) => (this.#retire = resolve));

  private constructor(opts: ProxyOptions) {
    if (opts.watchdogMs !== undefined && (!Number.isInteger(opts.watchdogMs) || opts.watchdogMs < 0 || opts.watchdogMs > 0xffff_ffff))
      throw new ProxyError('NM_ERR_CONFIG', `nodemesh proxy: watchdog ${opts.watchdogMs} ms must be a whole number of ms (0: no watchdog)`);
    this.node = opts.node;
    this.#opts = opts;
    this.state = new ConfigState({ maxItems: opts.maxConfigItems });
    this.#log = (opts.log ?? silentLogger()).child({ component: 'proxy', node: opts.node });
    this.#updater = new StateUpdater({
      node: opts.node,
      state: this.state,
      log: this.#log,
      enrollment: {
        enroll: async (netns, pod) => {
          const cookie = await this.#datapath.enroll(netns, pod);
          // Before the pod's first delivery: a socket for a netns not yet prepared comes from the proxy's address.
          await this.#delivery.prepare(netns);
          return cookie;
        },
        update: (cookie, pod) => this.#datapath.enrollCookie(cookie, pod),
        unenroll: (cookie, netns) => {
          this.#datapath.unenrollCookie(cookie);
          this.#delivery.release(netns);
        },
      },
      certificates: { want: (id) => this.#certs.want(id), drop: (id) => this.#certs.drop(id), wanted: () => this.#certs.wanted() },
      // PeerAuthentication STRICT: the kernel drops plaintext that bypasses the proxy.
      // MeshConfig failOpen: this pod's connects go around the proxy while none is ready.
      podFlags: (view, w) => (view.mtlsMode(w) === 'STRICT' ? abi.POD_STRICT : 0) | (view.failOpen(w) ? abi.POD_FAIL_OPEN : 0),
      onCommit: (view) => this.#onCommit(view),
    });
    this.#balancers = new BalancerCache(opts.node);
    this.#delivery = new ClientAddressDelivery({ log: this.#log.child({ component: 'delivery' }), enabled: (opts.deliverFrom ?? 'client') === 'client' });
    this.#holdsReady = opts.upgrade === undefined;
    if (opts.upgrade) this.flows.continueFrom(opts.upgrade.nextFlowId + UPGRADE_FLOW_ID_GAP);
  }

  get ready(): boolean {
    return this.#ready;
  }

  get ports(): { outbound: number; tunnel: number; admin: number; metrics: number; health: number } {
    return { outbound: (this.#outbound.server.address() as { port: number } | null)?.port ?? 0, tunnel: this.#tunnelPort, ...this.#admin.ports };
  }

  #tunnelPort = 0;

  static async start(opts: ProxyOptions): Promise<NodeProxy> {
    const p = new NodeProxy(opts);
    try {
      await p.#start();
      return p;
    } catch (err) {
      await p.close().catch(() => {});
      throw err;
    }
  }

  async #start(): Promise<void> {
    const o = this.#opts;
    const limits = o.limits ?? LISTENER_DEFAULTS;
    // Before it joins or installs anything: the data path would send every pod connection to this address.
    for (const problem of [proxyAddressProblem('--proxy-ip', o.proxyIp, 4), o.proxyIp6 ? proxyAddressProblem('--proxy-ip6', o.proxyIp6, 6) : undefined]) {
      if (problem) throw new ProxyError('NM_ERR_PROXY_IP', `nodemesh proxy: ${problem}`);
    }
    // Before anything listens: no peer may be able to take the descriptors the proxy needs for itself.
    const fdLimit = readOpenFileLimit();
    if (fdLimit !== undefined) {
      const problem = fdBudgetProblem(limits, fdLimit);
      if (problem) throw new ProxyError('NM_ERR_FD_BUDGET', `nodemesh proxy: ${problem}`);
      this.#log.info({ fdLimit, ...fdBudget(limits) }, 'listener limits fit the open file limit');
    }
    this.#session = await NodeSession.open({
      node: o.node,
      controller: o.controller,
      stateDir: o.stateDir,
      token: o.token,
      caFile: o.caFile,
      log: this.#log,
      // The config stream moves to the renewed certificate now, not at its next break.
      onRenewed: (client) => this.#stream?.setClient(client),
    });

    this.#datapath = Datapath.install({ node: o.node, cgroup: o.cgroup, proxyIp: o.proxyIp, proxyIp6: o.proxyIp6, proxyPort: o.outboundPort ?? 15001, failOpen: o.failOpen ?? false });
    this.#metrics = new ProxyMetrics(() => this.#datapath.counters());
    try {
      this.#fastPath = FastPath.open();
      this.#metrics.fastPath(this.#fastPath);
    } catch (err) {
      this.#fastPathError = (err as Error).message;
      this.#log.warn(
        { err: (err as Error).message },
        'the same-node fast path is unavailable (needs sockmap and sk_skb programs: CONFIG_BPF_STREAM_PARSER): the proxy copies same-node connections itself',
      );
    }
    // From before this process counts anything: its /metrics carry on from the old one's, never below them.
    const reports = o.upgrade?.reports;
    reports?.subscribe(
      (report) => this.#metrics.fromPredecessor(reports.pid, report),
      () => this.#metrics.predecessorGone(reports.pid),
      () => this.#log.warn({ pid: reports.pid }, 'upgrade: a report of the old process was over its bound and not taken: its counters show as of its last one'),
    );
    const reporter = new ListenerReporter({ metrics: this.#metrics, log: this.#log.child({ component: 'listeners' }), limits: limits.rejectLog });
    this.#lastGood = new LastGoodStore({ dir: o.stateDir, node: o.node, log: this.#log, saveDelayMs: o.configSaveDelayMs });
    // What a proxy killed mid-save left behind (the files themselves are whole: the old one or the new).
    for (const f of [this.#lastGood.file, path.join(o.stateDir, WORKLOAD_CERTS_FILE)]) {
      const stale = removeStaleTemps(f);
      if (stale.length) this.#log.info({ removed: stale }, 'removed temporary files of an interrupted save');
    }
    this.#certs = new WorkloadCertificates({
      sign: (csr) => this.#session.client.sign(csr),
      log: this.#log,
      file: path.join(o.stateDir, WORKLOAD_CERTS_FILE),
      node: o.node,
      onIssued: (c, renewal) => {
        this.#metrics.certExpiry.set({ identity: c.identity }, Math.floor(c.notAfter.getTime() / 1000));
        if (renewal) this.#metrics.certRenewals.inc({ identity: c.identity });
      },
      onFailed: () => this.#metrics.certFailures.inc(),
    });
    const dialGuard = new DialGuard({ fixed: [o.proxyIp, o.proxyIp6], view: () => this.#updater.view });
    const localAddress = (family: 4 | 6): string | undefined => (family === 4 ? o.proxyIp : o.proxyIp6);
    this.#recorder = new ConnectionRecorder({ node: o.node, flows: this.flows, metrics: this.#metrics, log: this.#log.child({ component: 'access' }), accessLogLevel: o.accessLogLevel });
    const upstream = new UpstreamConnector({
      node: o.node,
      connectTimeoutMs: o.connectTimeoutMs ?? limits.outbound.connectTimeoutMs,
      localAddress,
      deliver: (host, source) => this.#delivery.socket(this.#updater.view.workloadAt(host)?.netns, host, source),
      tunnel: async (req) => {
        const address = req.destination.nodeAddresses.find((a) => !a.includes(':')) ?? req.destination.nodeAddresses[0];
        if (!address) throw new TunnelError('NM_ERR_TUNNEL_BROKEN', `node ${req.destination.node} has not said where it takes tunnels (its proxy never connected)`);
        // No certificate for the source is this node's problem, not the endpoint's.
        const cert = await this.#certs.ready(req.sourceIdentity, 5_000).catch((err: Error) => {
          throw new TunnelError('NM_ERR_TUNNEL_LOCAL', `this node holds no certificate for ${req.sourceIdentity}: ${err.message}`, { cause: err });
        });
        // Leave from the address the controller publishes for this node: the destination believes the pod's address only from there.
        const from = address.includes(':') ? o.proxyIp6 : o.proxyIp;
        return this.#pool.connect({
          sourceIdentity: req.sourceIdentity,
          sourceAddress: req.sourceAddress,
          ...(from ? { localAddress: from } : {}),
          credentials: { certPem: cert.certPem, keyPem: cert.keyPem },
          trustBundle: this.#updater.view.trustBundle,
          revoked: (serial) => this.#updater.view.revokedSerials.has(serial),
          node: { address, port: o.tunnelPort ?? 15008 },
          destinationIdentity: req.destination.identity,
          target: req.target,
        });
      },
    });
    this.#outbound = new OutboundServer({
      node: o.node,
      dialGuard,
      originOf: (s) => this.#datapath.originOf(s),
      workloadOfCookie: (c) => this.#updater.workloadOfCookie(c),
      view: () => this.#updater.view,
      policies: () => this.#updater.policies,
      balancers: this.#balancers,
      recorder: this.#recorder,
      upstream,
      log: this.#log.child({ component: 'outbound' }),
      idleTimeoutMs: o.idleTimeoutMs,
      limits: limits.outbound,
      reporter,
      ...(this.#fastPath ? { fastPath: this.#fastPath } : {}),
    });
    this.#allowAcceptQueueMigration();
    // Found now, not once a config arrives (which may be never while the controller is down). An upgrade's new process
    // shares its ports with the proxy that serves (SO_REUSEPORT), so for it they are taken by design.
    if (!o.upgrade) {
      const outbound = o.outboundPort ?? 15001;
      const tunnel = o.tunnelPort ?? 15008;
      await portFree(outbound).catch((err: Error) => {
        throw listenError('outbound', outbound, err);
      });
      await portFree(tunnel).catch((err: Error) => {
        throw listenError('tunnel', tunnel, err);
      });
    }
    this.#inbound = inboundServer({
      node: o.node,
      dialGuard,
      view: () => this.#updater.view,
      policies: () => this.#updater.policies,
      certs: this.#certs,
      recorder: this.#recorder,
      upstream,
      log: this.#log.child({ component: 'inbound' }),
      limits,
      reporter,
    });
    this.#events = this.#datapath.flowEvents(
      (records) => this.#onDatapathEvents(records),
      (err) => this.#log.warn({ err: err.message }, 'data path events'),
    );
    this.#admin = await startAdmin(
      {
        flows: this.flows,
        metrics: this.#metrics,
        ready: () => this.#ready,
        readiness: () => this.#configSummary(),
        configDump: () => ({ node: o.node, version: this.state.version, items: Object.fromEntries(this.state.items) }),
        status: () => this.status(),
        handover: this.#handoverSide(),
      },
      {
        adminHost: '127.0.0.1',
        adminPort: o.adminPort ?? 15000,
        adminSocket: o.adminSocket ?? path.join(o.stateDir, 'admin.sock'),
        metricsHost: '::',
        metricsPort: o.metricsPort ?? 15020,
        healthHost: '::',
        healthPort: o.healthPort ?? 15021,
        limits,
        reporter,
        log: this.#log,
      },
    );

    this.#stream = new ConfigStream({
      client: this.#session.client,
      node: o.node,
      proxyVersion: VERSION,
      addresses: [o.proxyIp, ...(o.proxyIp6 ? [o.proxyIp6] : [])],
      failMode: failMode({ failOpen: o.failOpen ?? false }),
      state: this.state,
      log: this.#log,
      validate: (s) => this.#updater.validate(s),
    });
    const first = new Promise<void>((resolve) => this.#stream.once('update', () => resolve()));
    // The lookups and policies follow the state in the same tick as it was committed.
    this.#stream.on('update', (result) => {
      this.#updater.commit(result);
      this.#lastGood.save(this.state);
      if (this.#source === 'disk') this.#log.info({ version: result.version, was: this.#lastGood.saved?.version }, `caught up with the controller: serving version ${result.version}`);
      this.#source = 'controller';
    });
    // At debug: a stream that keeps failing would write these on every attempt; the stream's own warning is rate limited.
    this.#stream.on('disconnected', (reason) => this.#log.debug({ reason }, 'controller away; serving the last config'));
    this.#stream.on('connected', () => this.#log.debug('controller connected'));
    this.#stream.start();
    await this.#firstConfig(first);
    await this.#updater.reconcile();
    // Only now may a pod's connection or a tunnel reach the proxy: before a config is held, the kernel refuses them (nothing listens).
    if (o.upgrade) await this.#listenAfterUpgrade();
    else {
      await this.#listenOutbound();
      await this.#listenTunnel();
    }
    this.#ready = true;
    this.#markReady();
    this.#metrics.ready.set(1);
    this.#log.info({ version: this.state.version, source: this.#source, ports: this.ports }, 'proxy ready');
    this.#reclaimer = new MemoryReclaimer({
      closed: () => this.flows.closedCount,
      onReclaim: (r) => this.#log.info({ why: r.why, rssMB: +(r.rssBeforeBytes / 1e6).toFixed(1), nowMB: +(r.rssAfterBytes / 1e6).toFixed(1), ms: +r.ms.toFixed(1) }, 'memory given back'),
    });
  }

  /**
   * Resolves once a validated config is held: the controller's first
   * version, or, when none came within controllerWaitMs, the one kept in the
   * state dir (the stream goes on trying; its first version replaces it). A
   * kept config that cannot be used is not: the proxy then waits for the
   * controller, however long.
   */
  async #firstConfig(fromController: Promise<void>): Promise<void> {
    const waitMs = this.#opts.controllerWaitMs ?? PROXY_DEFAULTS.controllerWaitMs;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([fromController, new Promise<void>((resolve) => (timer = setTimeout(resolve, waitMs)))]);
    clearTimeout(timer);
    if (this.#source !== 'none') return;
    try {
      const loaded = await this.#lastGood.load();
      if (!loaded) this.#lastGoodError = `none is kept in ${this.#lastGood.file}`;
      else if (applyLastGood(loaded, this.state, this.#updater, this.#opts.maxConfigItems)) {
        this.#source = 'disk';
        const at = new Date(loaded.savedAtUnixMs).toISOString();
        this.#log.warn(
          { version: loaded.version, savedAt: at, items: loaded.items, file: loaded.file, waitedMs: waitMs },
          `serving the last config from disk, version ${loaded.version}, saved at ${at}: the controller did not answer within ${waitMs} ms; it replaces this config when it does`,
        );
        return;
      }
    } catch (err) {
      if (!(err instanceof LastGoodError)) throw err;
      this.#lastGoodError = err.message;
      this.#log.error({ code: err.code, file: this.#lastGood.file }, err.message);
    }
    if (this.#source !== 'none') return;
    this.#log.warn({ waitedMs: waitMs, lastGood: this.#lastGoodError }, 'no config from the controller yet and none from disk: not serving (15001 and 15008 stay closed) until the controller answers');
    await fromController;
  }

  /** Where the config served came from, in a few words: the readiness body and /status. */
  #configSummary(): string {
    const v = this.state.version;
    if (this.#source === 'controller') return `config version ${v} from the controller`;
    if (this.#source === 'disk') {
      const saved = this.#lastGood.saved;
      return `config version ${v} from disk (${this.#lastGood.file}, saved at ${saved ? new Date(saved.savedAtUnixMs).toISOString() : '?'}), until the controller answers`;
    }
    return `no config yet: waiting for the controller${this.#stream ? '' : ' (not connecting yet)'}; pod traffic is not served${this.#lastGoodError ? ` (the kept config: ${this.#lastGoodError})` : ''}`;
  }

  /**
   * Ready in the kernel, with a heartbeat it checks: a proxy that dies
   * without close() (SIGKILL) stops beating, and after watchdogMs the node's
   * pods are refused (or, fail open, let around) instead of being sent to a
   * dead port (docs/architecture.md, 'Fail closed, and the watchdog').
   */
  #markReady(): void {
    const watchdogMs = this.#opts.watchdogMs ?? DEFAULT_WATCHDOG_MS;
    this.#datapath.configure({ ready: true, watchdogMs });
    this.#datapath.heartbeat();
    this.#heartbeat = setInterval(() => {
      try {
        this.#datapath.heartbeat();
      } catch (err) {
        this.#log.warn({ err: (err as Error).message }, 'data path heartbeat');
      }
    }, watchdogMs > 0 ? Math.min(HEARTBEAT_MS, Math.max(100, Math.floor(watchdogMs / 3))) : HEARTBEAT_MS);
    this.#heartbeat.unref();
  }

  async #listenOutbound(): Promise<void> {
    const port = this.#opts.outboundPort ?? 15001;
    await this.#outbound.listen(port).catch((err: Error) => {
      throw listenError('outbound', port, err);
    });
  }

  async #listenTunnel(): Promise<void> {
    const port = this.#opts.tunnelPort ?? 15008;
    this.#tunnelPort = await this.#inbound!.listen(port, '::').catch((err: Error) => {
      throw listenError('tunnel', port, err);
    });
  }

  /**
   * An upgrade's new process: every connection the kernel gives it must find
   * what the old one would have (the workloads enrolled, their certificates
   * for the tunnel's handshakes), so it joins the listeners' groups only now.
   */
  async #listenAfterUpgrade(): Promise<void> {
    await Promise.all(this.#certs.wanted().map((id) => this.#certs.ready(id, 10_000).catch(() => undefined)));
    await this.#listenOutbound();
    await this.#listenTunnel();
  }

  /**
   * Every listener is in an SO_REUSEPORT group; with tcp_migrate_req the
   * kernel moves connections still in a closing listener's accept queue to
   * another of its group, so an old process that stops listening during an
   * upgrade refuses none (per network namespace, so set here, in ours).
   */
  #allowAcceptQueueMigration(): void {
    try {
      if (fs.readFileSync(TCP_MIGRATE_REQ, 'utf8').trim() !== '1') fs.writeFileSync(TCP_MIGRATE_REQ, '1');
    } catch (err) {
      this.#log.warn(
        { err: (err as NodeJS.ErrnoException).code ?? (err as Error).message },
        `cannot set net.ipv4.tcp_migrate_req=1: an upgrade may refuse the connections queued on the old process's listeners (run as root, or set the sysctl in this namespace)`,
      );
    }
  }

  /** The running side of an upgrade (admin/handover.ts): what the admin socket's POST /upgrade does. */
  #handoverSide(): HandoverSide {
    return {
      prepare: () => this.#prepareHandover(),
      resume: (reason) => this.#resumeAfterFailedUpgrade(reason),
      handOver: (drainMs, lastReport) => this.#handOver(drainMs, lastReport),
      report: () => this.#metrics.report(),
    };
  }

  /**
   * A new process is about to start: the controller keeps one config stream
   * per node, so this one stops its own (and keeps serving its last config)
   * before the new one connects.
   */
  #prepareHandover(): Prepared {
    if (!this.#ready || this.#handedOver) throw new ProxyError('NM_ERR_UPGRADE', `the proxy of ${this.node} is not ready (still starting, or stopping): try the upgrade again once it is`);
    this.#stream.stop();
    // The new process owns the admin socket path from its start: it lists this one's flows from the side socket.
    void this.#admin.serveDraining();
    this.#log.info({ version: this.state.version }, 'upgrade: a new proxy process is starting; config stream paused, serving the last config');
    return { pid: process.pid, nextFlowId: this.flows.nextId, configVersion: this.state.version };
  }

  /** The new process failed or went away before it took over: carry on as before. */
  #resumeAfterFailedUpgrade(reason: string): void {
    if (this.#handedOver) return;
    this.#log.warn({ reason }, 'upgrade: the new proxy process did not take over; this one keeps serving and resumes its config stream');
    this.#stream.start();
    void this.#admin.stopDraining();
    // A new process that failed after it bound the admin socket removed it as it went.
    void this.#admin.reclaimSocket().catch((err: Error) => this.#log.warn({ err: err.message }, 'upgrade: cannot bind the admin socket again'));
  }

  /**
   * The new process is ready: stop listening (what is queued moves to its
   * listeners), keep established connections and tunnel streams until they
   * close or `drainMs` passes, then close what is left and resolve `retired`.
   * The data path's ready flag stays set: the new process holds it now.
   * Its flows stay readable on a side socket while it drains, and its
   * counters go to the new process, the last of them once it drained.
   */
  async #handOver(drainMs: number, lastReport: () => Promise<void>): Promise<LiveAtHandover> {
    this.#handedOver = true;
    this.#holdsReady = false;
    this.#ready = false;
    // Bound at the prepare; before the new process is told, in any case.
    await this.#admin.serveDraining();
    const live = { outbound: this.flows.liveCount, tunnelStreams: this.#inbound?.load.streams ?? 0 };
    this.#log.info({ drainMs, live }, 'upgrade: handed over to the new proxy process; draining');
    const started = Date.now();
    // Once the answer is written: admin, metrics and health first, from now on they are the new process's alone.
    setImmediate(() => {
      void this.#admin
        .retire()
        .catch(() => {})
        .then(() => this.close(drainMs))
        .then(
          () => this.#log.info({ drainedMs: Date.now() - started }, 'upgrade: drained; exiting'),
          (err: Error) => this.#log.warn({ err: err.message }, 'upgrade: draining failed; exiting'),
        )
        // After everything closed, so its counts are final.
        .then(lastReport)
        .finally(() => this.#retire());
    });
    return live;
  }

  /**
   * A SIGTERM while this process drains after a hand-over: what is left gets
   * `drainMs` from now (both listeners' close() only ever bring their
   * deadline closer), then `retired` resolves as usual.
   */
  /** Whether this process has handed over to a new one and is draining. */
  get retiring(): boolean {
    return this.#handedOver;
  }

  shortenDrain(drainMs: number): void {
    if (!this.#handedOver) return;
    this.#log.info({ drainMs }, 'upgrade: stopped while draining; closing what is left sooner');
    void this.#outbound.close(drainMs).then((cut) => {
      if (cut) this.#log.warn({ cut, drainMs }, 'connections still open at the drain deadline were closed');
    });
    void this.#inbound?.close(drainMs);
  }

  /** The upgrade's new process, once the old one has handed over: it owns the ready flag from now on. */
  tookOver(): void {
    this.#holdsReady = true;
  }

  /** In the tick a version is taken, after the lookups changed. */
  #onCommit(view: MeshView): void {
    this.#balancers.retain(view.services.keys());
    // Tunnels set up before a certificate was revoked end now, both ways.
    const revoked = (serial: string): boolean => view.revokedSerials.has(serial);
    const cut = (this.#inbound?.recheck() ?? 0) + this.#pool.recheck(revoked);
    if (cut) this.#log.warn({ event: 'security', cut, revoked: view.revokedSerials.size }, 'tunnels of revoked certificates closed');
    // Nor are this node's own revoked certificates presented again (one kept on disk from before the revocation included).
    if (view.revokedSerials.size) this.#certs?.revoked(revoked);
    // Connections a policy now denies end now, not at their own close. Only when the policies changed (a version that
    // touches none keeps the compiled set): asking about every open connection costs one evaluation each.
    if (this.#updater.policies !== this.#policiesAsked) {
      this.#policiesAsked = this.#updater.policies;
      const denied = (this.#outbound?.recheck(this.#updater.policies) ?? 0) + (this.#inbound?.reauthorize() ?? 0);
      if (denied) this.#log.info({ denied, version: view.version }, 'open connections the new policies deny were closed');
    }
    this.#metrics.configVersion.set(view.version);
  }

  /** Kernel events: plaintext the STRICT check dropped becomes a flow. */
  #onDatapathEvents(records: FlowRecord[]): void {
    for (const r of records) {
      if (r.kind !== 'strict-drop') continue;
      const w = this.#updater.workloadOfCookie(r.origin.netnsCookie);
      const dst = `${r.origin.ip}:${r.origin.port}`;
      this.#recorder.refused(
        {
          source: { ip: r.srcIp, port: r.srcPort },
          destination: { workload: w?.name, namespace: w?.namespace, identity: w?.identity, address: dst, originalAddress: dst },
          security: 'none',
          labels: connectionLabels({ reporter: 'destination', destination_workload: w?.name, destination_namespace: w?.namespace, connection_security_policy: 'none' }),
        },
        { verdict: 'dropped', reason: 'strict-plaintext', closeReason: 'dropped by the kernel (PeerAuthentication STRICT)' },
      );
    }
  }

  /** Why the node holds what it holds: `summary` says it in one line for /status readers and `nodemesh status --node`. */
  #controllerStatus(): Record<string, unknown> {
    const link = this.#stream?.link ?? { connected: false, failures: 0, lastError: '', lastErrorUnixMs: 0, retryAtUnixMs: 0 };
    return {
      address: this.#opts.controller,
      connected: link.connected,
      configVersion: this.state.version,
      failures: link.failures,
      lastError: link.lastError,
      lastErrorUnixMs: link.lastErrorUnixMs,
      retryAtUnixMs: link.retryAtUnixMs,
      summary: this.#stream ? describeLink(link, this.state.version) : 'not started yet (the proxy is still starting its listeners)',
    };
  }

  status(): Record<string, unknown> {
    return {
      node: this.node,
      version: VERSION,
      pid: process.pid,
      ready: this.#ready,
      failMode: failMode({ failOpen: this.#opts.failOpen ?? false }),
      controller: this.#controllerStatus(),
      identity: this.#session
        ? { node: this.node, notAfter: this.#session.identity.notAfter.toISOString(), trustDomain: this.#session.identity.trustDomain, renewals: this.#session.renewals }
        : null,
      workloadCertificates: this.#certs?.list() ?? [],
      tunnels: this.#pool.stats(),
      tunnelListener: this.#inbound?.load,
      delivery: this.#delivery.status(),
      fastPath: this.#fastPath
        ? { available: true, enabled: this.#updater.view.mesh.sameNodeFastPath, open: this.#fastPath.open, ...this.#fastPath.stats() }
        : { available: false, error: this.#fastPathError },
      connections: { live: this.flows.liveCount },
      workloads: this.#updater.enrolled().map(([cookie, w]) => ({ workload: w.key, identity: w.identity, netnsCookie: String(cookie) })),
      services: this.#updater.view.services.size,
      policies: this.#updater.view.policies.length,
      // What the node holds of the mesh, and what it costs.
      config: {
        source: this.#source,
        summary: this.#configSummary(),
        version: this.state.version,
        items: this.state.items.size,
        meshWorkloads: this.#updater.view.workloads.size,
        receiving: this.state.receiving ?? null,
        // The file a restart while the controller is away would serve.
        lastGood: this.#lastGood?.saved ?? null,
        ...(this.#lastGoodError && this.#source !== 'disk' ? { lastGoodError: this.#lastGoodError } : {}),
      },
      // Where the RSS is: the V8 heap (used and reserved), memory V8 objects hold outside it (Buffers among it), and the rest is native (TLS, HTTP/2, malloc's free lists).
      memory: {
        ...(({ rss, heapUsed, heapTotal, external, arrayBuffers }) => ({ rssBytes: rss, heapUsedBytes: heapUsed, heapTotalBytes: heapTotal, externalBytes: external, arrayBuffersBytes: arrayBuffers }))(process.memoryUsage()),
        ...(this.#reclaimer?.status() ?? { reclaims: 0, last: null }),
      },
      datapath: this.#datapath ? { counters: this.#datapath.counters(), config: this.#datapath.config() } : null,
    };
  }

  /**
   * Stops: not ready, stops accepting, gives connections (outbound and
   * tunnel streams alike) `drainMs` to finish, cuts the rest and says how
   * many, closes everything; the data path stays pinned. The kernel is told
   * at once: fail closed (the default) new pod connects are refused with
   * EPERM and counted in proxy_down for the whole drain; only a node or
   * workload that chose fail open goes around the proxy meanwhile. Nothing
   * here changes the fail mode.
   */
  async close(drainMs = 2_000): Promise<void> {
    this.#ready = false;
    clearInterval(this.#heartbeat);
    this.#reclaimer?.close();
    try {
      if (this.#holdsReady) this.#datapath?.setReady(false);
    } catch {
      // the data path was uninstalled under us
    }
    this.#stream?.stop();
    // The newest ACKed version reaches the state dir while connections drain.
    const kept = Promise.all([this.#lastGood?.flush(), this.#certs?.flush()]).catch(() => {});
    const draining = { outbound: this.flows.liveCount, tunnelStreams: this.#inbound?.load.streams ?? 0 };
    const [cut] = await Promise.all([this.#outbound?.close(drainMs) ?? Promise.resolve(0), this.#inbound?.close(drainMs)]);
    if (cut) this.#log.warn({ cut, drainMs, atStart: draining }, 'connections still open at the drain deadline were closed');
    else if (this.#outbound) this.#log.info({ drainMs, atStart: draining }, 'drained');
    this.#events?.close();
    await this.#pool.close();
    // Bounded: a stuck disk must not hold the exit (the previous file stays whole).
    await Promise.race([kept, new Promise((resolve) => setTimeout(resolve, 5_000).unref())]);
    this.#lastGood?.close();
    this.#certs?.close();
    this.#delivery.close();
    this.#fastPath?.close();
    await this.#admin?.close();
    this.#session?.close();
    this.#datapath?.close();
  }
}

/** The error for a port the proxy cannot take, checked early or met when it listens: the same words either way. */
function listenError(which: 'outbound' | 'tunnel', port: number, err: Error): ProxyError {
  return which === 'outbound'
    ? new ProxyError('NM_ERR_LISTEN', `cannot listen on port ${port}: ${err.message} (is another proxy running on this node?)`)
    : new ProxyError('NM_ERR_LISTEN', `cannot listen on tunnel port ${port}: ${err.message}`);
}

/** Fails as listen() would if `port` is taken; nothing is left listening. */
function portFree(port: number): Promise<void> {
  if (port === 0) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen({ port, host: '::', ipv6Only: false }, () => probe.close(() => resolve()));
  });
}
