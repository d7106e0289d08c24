import * as net from 'node:net';

import { Datapath, DEFAULT_PROXY_PORT, failMode, plainIp, type Origin } from '../../node-proxy/datapath';
import { defineCommand, EXIT, termination, type Command, type Io } from '../command';
import { intFlag, requiredFlag, toJson } from '../output';

const install = defineCommand({
  name: 'install',
  summary: 'Load the redirect programs, attach them at the cgroup2 root and pin them',
  usage: 'datapath install --node N --proxy-ip IP [--cgroup PATH] [--proxy-port 15001] [--fail-open] [--ready]',
  description:
    'Maps and links are pinned under /sys/fs/bpf/nodemesh/<node>/, so redirection outlives this\n' +
    'command. Run again on an installed node, it adopts the pins and switches the programs in\n' +
    'place (or moves them, without a gap, when --cgroup changed). Pods are redirected only once\n' +
    'enrolled and once the proxy is marked ready; until then their connects are refused (EPERM),\n' +
    'unless --fail-open lets them go around the proxy. At the cgroup2 root (the default) every socket\n' +
    "of an enrolled pod's network namespace is redirected, whichever cgroup its process is in;\n" +
    'with --cgroup only those of processes below that cgroup are.',
  options: {
    node: { type: 'string' },
    cgroup: { type: 'string' },
    'proxy-ip': { type: 'string' },
    'proxy-ip6': { type: 'string' },
    'proxy-port': { type: 'string', default: String(DEFAULT_PROXY_PORT) },
    'fail-open': { type: 'boolean', default: false },
    ready: { type: 'boolean' },
  },
  optionHelp: {
    node: 'node name (required)',
    cgroup: 'cgroup v2 directory to attach to (default: the cgroup2 root)',
    'proxy-ip': "the node proxy's IPv4 address (required)",
    'proxy-ip6': "the node proxy's IPv6 address",
    'proxy-port': 'the outbound port of the proxy',
    'fail-open': 'let pod connects around the proxy while it is not ready (default: refuse them, EPERM)',
    ready: 'mark the proxy ready now, with no watchdog (otherwise the proxy does it, and keeps a heartbeat)',
  },
  async run(values, _p, io) {
    const cmd = 'nodemesh datapath install';
    const dp = Datapath.install({
      node: requiredFlag(cmd, 'node', values.node),
      cgroup: values.cgroup as string | undefined,
      proxyIp: requiredFlag(cmd, 'proxy-ip', values['proxy-ip']),
      proxyIp6: values['proxy-ip6'] as string | undefined,
      proxyPort: intFlag(cmd, 'proxy-port', values['proxy-port'], 1, 65535),
      failOpen: values['fail-open'] as boolean,
      ready: values.ready as boolean | undefined,
    });
    const c = dp.config();
    io.out(`datapath ${dp.node}: attached to ${dp.cgroup()}, redirecting to ${c.proxyIp}:${c.proxyPort} (${c.ready ? 'ready' : 'not ready'}, ${failMode(c)}), pinned at ${dp.pinDir}\n`);
    dp.close();
    return EXIT.ok;
  },
});

/** Opens the node's installed data path for one command, and closes it after. */
async function withDatapath<T>(cmd: string, node: unknown, fn: (dp: Datapath) => Promise<T>): Promise<T> {
  const dp = Datapath.open(requiredFlag(cmd, 'node', node));
  try {
    return await fn(dp);
  } finally {
    dp.close();
  }
}

const enrollOptions = {
  node: { type: 'string' },
  netns: { type: 'string' },
  index: { type: 'string', default: '0' },
} as const;

const enroll = defineCommand({
  name: 'enroll',
  summary: "Redirect a pod's TCP connects to the node proxy (by its network namespace)",
  usage: 'datapath enroll --node N --netns PATH [--index I]',
  options: enrollOptions,
  optionHelp: { node: 'node name (required)', netns: "the pod's netns file, e.g. /run/netns/NAME (required)", index: "the proxy's index of this workload" },
  async run(values, _p, io) {
    const cmd = 'nodemesh datapath enroll';
    const netns = requiredFlag(cmd, 'netns', values.netns);
    const index = intFlag(cmd, 'index', values.index, 0, 2 ** 32 - 1);
    await withDatapath(cmd, values.node, async (dp) => {
      const cookie = await dp.enroll(netns, { index });
      io.out(`enrolled ${netns} (netns cookie ${cookie}) on ${dp.node}\n`);
    });
    return EXIT.ok;
  },
});

const unenroll = defineCommand({
  name: 'unenroll',
  summary: 'Stop redirecting a pod',
  usage: 'datapath unenroll --node N --netns PATH',
  options: { node: enrollOptions.node, netns: enrollOptions.netns },
  optionHelp: { node: 'node name (required)', netns: "the pod's netns file (required)" },
  async run(values, _p, io) {
    const cmd = 'nodemesh datapath unenroll';
    const netns = requiredFlag(cmd, 'netns', values.netns);
    await withDatapath(cmd, values.node, async (dp) => {
      io.out((await dp.unenroll(netns)) ? `unenrolled ${netns} from ${dp.node}\n` : `${netns} was not enrolled on ${dp.node}\n`);
    });
    return EXIT.ok;
  },
});

const uninstall = defineCommand({
  name: 'uninstall',
  summary: 'Detach the programs and remove every pin of a node (idempotent)',
  usage: 'datapath uninstall --node N',
  options: { node: { type: 'string' } },
  optionHelp: { node: 'node name (required)' },
  async run(values, _p, io) {
    const node = requiredFlag('nodemesh datapath uninstall', 'node', values.node);
    const was = Datapath.installed(node);
    Datapath.uninstall(node);
    io.out(was ? `datapath ${node}: detached and unpinned\n` : `datapath ${node}: nothing was installed\n`);
    return EXIT.ok;
  },
});

/** One line of JSON per connection: what the data path says about it. */
export function echoOrigins(dp: Datapath, server: net.Server, io: Io): void {
  server.on('connection', (sock) => {
    sock.on('error', () => {});
    const origin: Origin | undefined = dp.originOf(sock);
    const line = toJson({ peer: `${plainIp(sock.remoteAddress ?? '')}:${sock.remotePort}`, origin: origin ?? null }).replace(/\n\s*/g, ' ');
    io.out(line.trim() + '\n');
    sock.end(line.trim() + '\n');
  });
}

const echo = defineCommand({
  name: 'echo',
  summary: 'Stand in for the proxy: answer each redirected connection with its origin',
  usage: 'datapath echo --node N [--listen ::] [--port 15001]',
  description:
    "Listens on the proxy port (run it where the proxy would run: in a lab, `nodemesh lab exec\n" +
    'n1 -- nodemesh datapath echo --node <lab>-n1`) and writes back, as one JSON line, the\n' +
    'original destination, netns cookie, cgroup id and pid the kernel recorded. Marks the data\n' +
    'path ready while it listens.',
  options: {
    node: { type: 'string' },
    listen: { type: 'string', default: '::' },
    port: { type: 'string', default: String(DEFAULT_PROXY_PORT) },
  },
  optionHelp: { node: 'node name (required)', listen: 'address to listen on (:: takes IPv4 too)', port: 'port to listen on' },
  async run(values, _p, io) {
    const cmd = 'nodemesh datapath echo';
    const dp = Datapath.open(requiredFlag(cmd, 'node', values.node));
    const server = net.createServer();
    echoOrigins(dp, server, io);
    const port = intFlag(cmd, 'port', values.port, 1, 65535);
    await new Promise<void>((resolve, reject) => server.once('error', reject).listen(port, values.listen as string, resolve));
    // Ready while something listens; not ready (fail closed, or open if chosen) after. It beats
    // no heartbeat: the watchdog a proxy set before is turned off.
    dp.configure({ ready: true, watchdogMs: 0 });
    io.out(`listening on ${values.listen as string}:${port} for ${dp.node}\n`);
    await termination();
    dp.setReady(false);
    server.close();
    dp.close();
    return EXIT.ok;
  },
});

export const datapathCommand: Command = {
  name: 'datapath',
  summary: "Install, inspect and remove a node's eBPF redirection",
  usage: 'datapath <install|enroll|unenroll|uninstall|echo> [flags]',
  options: {},
  optionHelp: {},
  subcommands: [install, enroll, unenroll, uninstall, echo],
};
