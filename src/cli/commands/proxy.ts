import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';

import { findCgroup2Mount } from '../../bpf';
import type { MeshError } from '../../errors';
import { DEFAULT_DATA_DIR } from '../../api/credentials';
import { createLogger } from '../../log';
import { adminGet, adminSocketOf, prepareUpgrade, PROXY_RUN_DIR, UpgradeError, type UpgradeLease } from '../../node-proxy/admin';
import { formatFlow, type Flow } from '../../node-proxy/flows';
import { readBootstrapToken, TOKEN_ENV } from '../../node-proxy/identity';
import { LIMITS } from '../../api/limits';
import { parseDurationMs } from '../../api/duration';
import { limitsFromFlags, listenerFlagOptions } from '../../node-proxy/listeners';
import { NodeProxy, PROXY_DEFAULTS, type ProxyOptions } from '../../node-proxy/proxy';
import { defineCommand, EXIT, termination, UsageError, type Io } from '../command';
import { outputFormat, requiredFlag, toJson } from '../output';

function accessLevel(v: string): 'trace' | 'debug' | 'info' | 'warn' | 'silent' {
  if (['trace', 'debug', 'info', 'warn', 'silent'].includes(v)) return v as 'trace';
  throw new UsageError(`nodemesh proxy: --access-log-level must be trace, debug, info, warn or silent, not ${v}`);
}

const LISTENER_FLAGS = listenerFlagOptions();

/** How long an upgrade's new process may take to be ready before it gives up and the old one carries on. */
const UPGRADE_START_TIMEOUT_MS = 60_000;

/** Whether a proxy process answers on `socket` (a file left by a killed one does not). */
function proxyAnswers(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(socket);
    c.setTimeout(1_000, () => (c.destroy(), resolve(false)));
    c.once('connect', () => (c.destroy(), resolve(true)));
    c.once('error', () => resolve(false));
  });
}

/**
 * `--upgrade`: the running proxy stops its config stream, this one starts
 * beside it (every listener shares its port), and once ready asks it to hand
 * over; if this one cannot start, the old one resumes (docs/architecture.md,
 * 'Upgrades that drop nothing').
 */
async function startUpgrade(opts: ProxyOptions, socket: string, drainMs: number): Promise<{ proxy: NodeProxy; oldPid: number; live: { outbound: number; tunnelStreams: number } }> {
  const lease: UpgradeLease = await prepareUpgrade(socket);
  const { pid } = lease.prepared;
  let timer: NodeJS.Timeout | undefined;
  let timedOut = false;
  const starting = NodeProxy.start({ ...opts, upgrade: { nextFlowId: lease.prepared.nextFlowId, reports: lease.reports } });
  starting.catch(() => {}); // awaited below; a start given up on may still fail later
  try {
    const proxy = await Promise.race([
      starting,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => ((timedOut = true), reject(new UpgradeError('NM_ERR_UPGRADE', `not ready within ${UPGRADE_START_TIMEOUT_MS / 1000} s (is the controller reachable?)`))), UPGRADE_START_TIMEOUT_MS);
      }),
    ]);
    clearTimeout(timer);
    const live = await lease.handOver(drainMs).catch(async (err: Error) => {
      await proxy.close(0);
      throw err;
    });
    proxy.tookOver();
    return { proxy, oldPid: pid, live };
  } catch (err) {
    clearTimeout(timer);
    lease.abort((err as Error).message);
    // A start still under way would serve on and take the config stream back: leave without it (exiting
    // closes nothing by name, so the admin socket file stays the old process's; the ready flag stays set).
    if (timedOut) setTimeout(() => process.exit(EXIT.rejected), 100).unref();
    throw new UpgradeError(
      'NM_ERR_UPGRADE',
      `nodemesh proxy --upgrade: the new proxy did not take over: ${(err as Error).message}; the running proxy (pid ${pid}) keeps serving and has resumed its config stream`,
      { cause: err },
    );
  }
}

export const proxyCommand = defineCommand({
  name: 'proxy',
  summary: 'Run the node proxy (outbound 15001, admin 15000, metrics 15020, readiness 15021)',
  usage: 'proxy --node N --controller IP:PORT --proxy-ip IP [--token-file F --ca-file F] [--cgroup PATH] [--state-dir DIR] [--fail-open] [--deliver-from client|proxy] [--upgrade [--upgrade-drain 5m]]',
  description:
    'Joins the controller with the bootstrap token (once: the node certificate is kept in the\n' +
    `state dir and renewed at half its life). The token comes in a file (--token-file) or in\n` +
    `$${TOKEN_ENV}, never on the command line, where every \`ps\` would show it.\n` +
    'Installs or adopts the eBPF data path (at the cgroup2 root), enrolls\n' +
    'the workloads the controller places on this node, and proxies their connections. While no\n' +
    "proxy is ready the node fails closed: its pods' connects are refused (EPERM), never sent\n" +
    'around the mesh, unless --fail-open (this node) or MeshConfig failOpen (named workloads). In the\n' +
    'lab, `nodemesh lab up` runs one per node.',
  options: {
    node: { type: 'string' },
    controller: { type: 'string' },
    // Accepted only to refuse it with the two ways that keep the secret out of `ps`.
    token: { type: 'string' },
    'token-file': { type: 'string' },
    'ca-file': { type: 'string' },
    'state-dir': { type: 'string' },
    cgroup: { type: 'string' },
    'proxy-ip': { type: 'string' },
    'proxy-ip6': { type: 'string' },
    'fail-open': { type: 'boolean', default: false },
    'deliver-from': { type: 'string', default: 'client' },
    watchdog: { type: 'string', default: '3s' },
    // The default now; accepted so existing command lines keep working.
    'fail-closed': { type: 'boolean', default: false },
    'log-level': { type: 'string', default: 'info' },
    'access-log-level': { type: 'string', default: 'info' },
    'max-config-items': { type: 'string' },
    'drain-timeout': { type: 'string', default: '2s' },
    'controller-wait': { type: 'string' },
    upgrade: { type: 'boolean', default: false },
    'upgrade-drain': { type: 'string', default: '5m' },
    ...LISTENER_FLAGS.options,
  },
  optionHelp: {
    'access-log-level': 'level of the per-connection access log line: trace, debug, info, warn or silent',
    node: 'node name (required)',
    controller: 'controller address IP:PORT (required)',
    token: `refused: a token on the command line is visible to every user in ps; use --token-file or $${TOKEN_ENV}`,
    'token-file': `file holding the bootstrap token, mode 0600 (first start; or $${TOKEN_ENV})`,
    'ca-file': "the controller's CA certificate (first start)",
    'state-dir': `where the node certificate, the last config and the workload certificates are kept (default ${DEFAULT_DATA_DIR}/proxy/<node>)`,
    cgroup: 'cgroup v2 directory to attach the data path to (default: the cgroup2 root, so every socket of a pod netns is captured)',
    'proxy-ip': "this node's IPv4 address, where pods are redirected (required)",
    'proxy-ip6': "this node's IPv6 address",
    'fail-open': "while no proxy is ready (starting, stopping, killed), let this node's pods connect around it: no policy, no mTLS. Default: fail closed, their connects are refused (EPERM)",
    watchdog:
      "how old the proxy's heartbeat in the kernel may get before its node counts it gone and fails closed (or open) instead of sending pods to a dead port (default 3s; 0 turns the watchdog off)",
    'deliver-from':
      "where this node's pods see their mesh clients connect from: client (default: the client pod's own address, from inside the pod's netns with IP_TRANSPARENT; needs CAP_SYS_ADMIN and CAP_NET_ADMIN) or proxy (this proxy's address, as a plain reverse proxy)",
    'fail-closed': 'the default (accepted for older command lines): refuse pod connects while no proxy is ready',
    'log-level': 'trace, debug, info, warn, error',
    'max-config-items': `items of config (workloads, services, policies of the cluster) this node holds at most; a larger snapshot is refused and the proxy keeps its config (default ${LIMITS.maxNodeConfigItems})`,
    'drain-timeout': 'on SIGTERM or SIGINT: how long open connections get to finish before they are closed (default 2s); new ones are not accepted meanwhile',
    'controller-wait': `how long to wait at start for the controller's config before serving the last one this node kept in its state dir (default ${PROXY_DEFAULTS.controllerWaitMs / 1000}s); pod traffic is not served before one of them is held`,
    upgrade:
      "take over from the proxy running for this node (same flags otherwise): it starts beside it and, once ready, the old one stops listening, keeps its connections until they close or --upgrade-drain passes, and exits; nothing is refused or broken. If this one cannot start, the old one keeps serving",
    'upgrade-drain': 'with --upgrade: how long the old process keeps connections open before it closes what is left',
    ...LISTENER_FLAGS.help,
  },
  async run(values, _p, io) {
    const cmd = 'nodemesh proxy';
    if (values.token !== undefined)
      throw new UsageError(`${cmd}: --token puts the bootstrap token in every \`ps\` listing: write it to a file (mode 0600) and pass --token-file FILE, or set $${TOKEN_ENV}`);
    if (values['fail-open'] && values['fail-closed']) throw new UsageError(`${cmd}: --fail-open and --fail-closed contradict each other: give one (fail closed is the default)`);
    const node = requiredFlag(cmd, 'node', values.node);
    const watchdogText = values.watchdog as string;
    const watchdogMs = watchdogText === '0' ? 0 : parseDurationMs(watchdogText);
    // Below a second the heartbeat (every third of it) would be starved by any busy moment of the event loop.
    if (watchdogMs === undefined || (watchdogMs !== 0 && (watchdogMs < 1_000 || watchdogMs > 3_600_000)))
      throw new UsageError(`${cmd}: --watchdog must be 0 (off) or a duration from 1s to 1h such as 3s, not ${JSON.stringify(watchdogText)}`);
    const deliverFrom = values['deliver-from'] as string;
    if (deliverFrom !== 'client' && deliverFrom !== 'proxy') throw new UsageError(`${cmd}: --deliver-from must be client or proxy, not ${JSON.stringify(deliverFrom)}`);
    const token = readBootstrapToken(values['token-file'] as string | undefined);
    const cgroup = (values.cgroup as string | undefined) ?? findCgroup2Mount();
    if (!cgroup) throw new UsageError(`${cmd}: cgroup v2 is not mounted (mount -t cgroup2 none /sys/fs/cgroup); or give --cgroup`);
    let limits;
    try {
      limits = limitsFromFlags(values, cmd);
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
    const maxItemsFlag = values['max-config-items'] as string | undefined;
    const maxConfigItems = maxItemsFlag === undefined ? undefined : Number(maxItemsFlag);
    if (maxConfigItems !== undefined && (!Number.isSafeInteger(maxConfigItems) || maxConfigItems < 1))
      throw new UsageError(`${cmd}: --max-config-items must be a whole number of at least 1, not ${JSON.stringify(maxItemsFlag)}`);
    const drainText = values['drain-timeout'] as string;
    const drainMs = parseDurationMs(drainText);
    if (drainMs === undefined) throw new UsageError(`${cmd}: --drain-timeout must be a duration like 500ms, 2s or 1m, not ${JSON.stringify(drainText)}`);
    const waitFlag = values['controller-wait'] as string | undefined;
    const controllerWaitMs = waitFlag === undefined ? undefined : parseDurationMs(waitFlag);
    if (controllerWaitMs === undefined && waitFlag !== undefined) throw new UsageError(`${cmd}: --controller-wait must be a duration such as 2500ms, 3s or 1m, not ${JSON.stringify(waitFlag)}`);
    const upgradeText = values['upgrade-drain'] as string;
    const upgradeDrainMs = parseDurationMs(upgradeText);
    if (upgradeDrainMs === undefined) throw new UsageError(`${cmd}: --upgrade-drain must be a duration like 30s, 5m or 1h, not ${JSON.stringify(upgradeText)}`);
    const socket = adminSocketOf(node);
    // Every listener shares its port (SO_REUSEPORT, for upgrades): a second proxy of the node must be refused here, or both would serve.
    if (!values.upgrade && (await proxyAnswers(socket)))
      throw new UsageError(`${cmd}: a proxy for node ${node} is running already (it answers on ${socket}): stop it first, or pass --upgrade to take over from it`);
    const log = createLogger({ level: values['log-level'] as string });
    const opts: ProxyOptions = {
      maxConfigItems,
      controllerWaitMs,
      node,
      controller: requiredFlag(cmd, 'controller', values.controller),
      token,
      caFile: values['ca-file'] as string | undefined,
      stateDir: (values['state-dir'] as string | undefined) ?? path.join(DEFAULT_DATA_DIR, 'proxy', node),
      adminSocket: socket,
      cgroup,
      proxyIp: requiredFlag(cmd, 'proxy-ip', values['proxy-ip']),
      proxyIp6: values['proxy-ip6'] as string | undefined,
      failOpen: values['fail-open'] as boolean,
      deliverFrom,
      watchdogMs,
      accessLogLevel: accessLevel(values['access-log-level'] as string),
      limits,
      log,
    };
    let proxy: NodeProxy;
    if (values.upgrade) {
      const started = Date.now();
      const up = await startUpgrade(opts, socket, upgradeDrainMs);
      proxy = up.proxy;
      log.info({ oldPid: up.oldPid, live: up.live, tookMs: Date.now() - started, upgradeDrainMs }, 'upgrade: took over');
      io.out(`proxy ${node} took over from pid ${up.oldPid} in ${Date.now() - started} ms; it drains ${up.live.outbound} connections and ${up.live.tunnelStreams} tunnel streams for at most ${upgradeText}\n`);
    } else {
      proxy = await NodeProxy.start(opts);
    }
    io.out(`proxy ${node} ready: outbound ${proxy.ports.outbound}, admin 127.0.0.1:${proxy.ports.admin} and ${socket}, metrics ${proxy.ports.metrics}\n`);
    // Handed over to a new process (`--upgrade`) and drained: nothing left to do here.
    const retired = await Promise.race([termination().then(() => false), proxy.retired.then(() => true)]);
    if (retired || proxy.retiring) {
      if (!retired) {
        // Stopped while it drains after a hand-over: --drain-timeout bounds what is left, as on any SIGTERM.
        proxy.shortenDrain(drainMs);
        await proxy.retired;
      }
      log.flush();
      return EXIT.ok;
    }
    log.info({ drainMs }, 'shutting down');
    await proxy.close(drainMs);
    log.flush();
    return EXIT.ok;
  },
});

/** How long `flows -f` waits for a node's admin socket to answer again after its stream ended (an upgrade: the new process owns it by then). */
const FOLLOW_REJOIN_MS = 5_000;
/** Flow ids `flows -f` remembers having printed, so a stream joined again does not print its replayed flows twice. */
const FOLLOW_SEEN_MAX = 100_000;

/**
 * Follows one node's flows. An upgrade ends the stream (the old process's
 * admin socket closes): it is joined again on the new process, which
 * follows the draining one's flows too (docs/architecture.md, 'Upgrades that
 * drop nothing'); what it replays is not printed twice. A node whose socket
 * does not answer again within FOLLOW_REJOIN_MS has stopped: a warning, and
 * that node's follow ends.
 */
async function followNode(node: string, q: URLSearchParams, format: string, io: Io, stopped: () => boolean): Promise<void> {
  const seen = new Set<number>();
  const print = (line: string): void => {
    const e = JSON.parse(line) as { event: string; flow: Flow };
    if (e.event !== 'close' || seen.has(e.flow.id)) return;
    seen.add(e.flow.id);
    if (seen.size > FOLLOW_SEEN_MAX) seen.delete(seen.values().next().value!);
    io.out(format === 'json' ? JSON.stringify(e.flow) + '\n' : formatFlow(e.flow) + '\n');
  };
  let lastUp = Date.now();
  let first = true;
  while (!stopped()) {
    try {
      await adminGet(adminSocketOf(node), `/flows?${q}`, (line) => ((lastUp = Date.now()), print(line)));
      lastUp = Date.now();
    } catch (err) {
      // Not reached at first: the user's to see, as without -f. Cut short later: the proxy stopped or handed over.
      if (first && (err as MeshError).code !== 'NM_ERR_ADMIN_CLOSED') throw err;
    }
    first = false;
    if (stopped()) return;
    if (Date.now() - lastUp > FOLLOW_REJOIN_MS) {
      io.err(`nodemesh flows: node ${node}'s proxy stopped answering; no longer following it\n`);
      return;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

export const flowsCommand = defineCommand({
  name: 'flows',
  summary: 'Connections the node proxies handled, one line each (like hubble observe)',
  usage: 'flows [--node N] [-f] [--from POD] [--to SVC] [--verdict allowed|denied|dropped|error] [-o text|json]',
  description: 'Without --node: every proxy running on this host (each lab node), merged by time.',
  options: {
    node: { type: 'string' },
    follow: { type: 'boolean', short: 'f', default: false },
    from: { type: 'string' },
    to: { type: 'string' },
    verdict: { type: 'string' },
    limit: { type: 'string', default: '100' },
    output: { type: 'string', short: 'o', default: 'text' },
  },
  optionHelp: {
    node: 'one node',
    follow: 'keep printing new flows',
    from: 'source workload (pod) name',
    to: 'destination service or workload name',
    verdict: 'allowed, denied, dropped (STRICT) or error',
    limit: 'at most this many past flows per node',
    output: 'text or json (NDJSON with -f)',
  },
  async run(values, _p, io: Io) {
    const format = outputFormat('nodemesh flows', values.output);
    if (values.verdict && !['allowed', 'denied', 'dropped', 'error'].includes(values.verdict as string))
      throw new UsageError(`nodemesh flows: --verdict must be allowed, denied, dropped or error, not ${String(values.verdict)}`);
    const nodes = values.node ? [values.node as string] : fs.existsSync(PROXY_RUN_DIR) ? fs.readdirSync(PROXY_RUN_DIR).filter((n) => fs.existsSync(adminSocketOf(n))) : [];
    if (nodes.length === 0) throw new UsageError('nodemesh flows: no node proxy runs on this host (none under /run/nodemesh/proxy); start one, or give --node');
    const q = new URLSearchParams();
    for (const k of ['from', 'to', 'verdict'] as const) if (values[k]) q.set(k, values[k] as string);
    q.set('limit', values.limit as string);
    if (values.follow) {
      q.set('follow', '1');
      let stopped = false;
      const stop = termination().then(() => void (stopped = true));
      await Promise.race([Promise.all(nodes.map((n) => followNode(n, q, format, io, () => stopped))), stop]);
      return EXIT.ok;
    }
    const answers = await Promise.allSettled(nodes.map(async (n) => JSON.parse(await adminGet(adminSocketOf(n), `/flows?${q}`)) as Flow[]));
    // Asked by name, a proxy that does not answer is an error; found on the host, it is skipped with a warning (it may be
    // stopping or restarting) so the others still show.
    const failed = answers.flatMap((a, i) => (a.status === 'rejected' ? [{ node: nodes[i]!, err: a.reason as Error }] : []));
    if (failed.length === nodes.length || (values.node && failed.length)) throw failed[0]!.err;
    for (const f of failed) io.err(`nodemesh flows: skipped node ${f.node}: ${f.err.message}\n`);
    const all = answers.flatMap((a) => (a.status === 'fulfilled' ? a.value : []));
    all.sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
    if (format === 'json') io.out(toJson(all));
    else if (all.length === 0) io.err('no flows\n');
    else for (const f of all) io.out(formatFlow(f) + '\n');
    return EXIT.ok;
  },
});
