import { findTarget, labDown, labExec, labUp, listLabs, readLab, runDemo, LabError, type LabState } from '../../lab';
import { defineCommand, EXIT, untilSignal, UsageError, type Command } from '../command';
import { intFlag, outputFormat, table, toJson } from '../output';

const DEFAULT_NAME = 'lab';

function mustRead(name: string): LabState {
  const lab = readLab(name);
  if (!lab) throw new LabError('NM_ERR_LAB_NOT_FOUND', `no lab named ${name}: make one with \`nodemesh lab up --name ${name}\` (\`nodemesh lab list\` shows what exists)`);
  return lab;
}

const up = defineCommand({
  name: 'up',
  summary: 'Build a lab: nodes and pods as network namespaces and cgroups',
  usage: 'lab up [--name lab] [--nodes 2] [--pods-per-node 2] [--bare]',
  description:
    'Each node is a network namespace on a bridge (198.18.<16k>.0/24 for lab slot k), each pod a\n' +
    'network namespace and a cgroup behind its node (198.18.<16k+n>.0/24). Nothing routes outside\n' +
    'the namespaces the lab makes. Then it starts a controller on the lab bridge and a proxy in\n' +
    'each node, and registers every pod as a Workload (--bare: namespaces and cgroups only).\n' +
    'Interrupted or failed, it removes what it made.',
  options: {
    name: { type: 'string', default: DEFAULT_NAME },
    nodes: { type: 'string', default: '2' },
    'pods-per-node': { type: 'string', default: '2' },
    bare: { type: 'boolean', default: false },
  },
  optionHelp: { name: 'lab name: 1-8 lowercase letters or digits', nodes: 'number of nodes (1-15)', 'pods-per-node': 'pods on each node (0-253)', bare: 'no controller and proxies' },
  async run(values, _p, io) {
    const nodes = intFlag('nodemesh lab up', 'nodes', values.nodes, 1, 15);
    const podsPerNode = intFlag('nodemesh lab up', 'pods-per-node', values['pods-per-node'], 0, 253);
    const lab = await untilSignal((signal) => labUp({ name: values.name as string, nodes, podsPerNode, mesh: !values.bare, signal, log: (l) => io.out(l + '\n') }));
    io.out(`lab ${lab.name} is up: \`nodemesh lab list --name ${lab.name}\`, \`nodemesh lab exec --name ${lab.name} ${lab.pods[0]?.name ?? 'n1'} -- CMD\`, \`nodemesh lab down --name ${lab.name}\`\n`);
    if (lab.mesh) io.out(`controller: export NODEMESH_CREDENTIALS=${lab.mesh.controller.credentials}; then nodemesh apply -f …, nodemesh flows, nodemesh status\n`);
    return EXIT.ok;
  },
});

const down = defineCommand({
  name: 'down',
  summary: 'Remove a lab and everything it made (idempotent)',
  usage: 'lab down [--name lab]',
  options: { name: { type: 'string', default: DEFAULT_NAME } },
  optionHelp: { name: 'lab name' },
  async run(values, _p, io) {
    const r = await labDown(values.name as string);
    if (r.removed.length === 0 && r.errors.length === 0) io.out(`lab ${String(values.name)}: nothing to remove\n`);
    else io.out(`lab ${String(values.name)}: removed ${r.removed.length} objects\n`);
    for (const e of r.errors) io.err(`error: ${e}\n`);
    return r.errors.length ? EXIT.rejected : EXIT.ok;
  },
});

const list = defineCommand({
  name: 'list',
  summary: 'List labs, or the nodes and pods of one',
  usage: 'lab list [--name NAME] [-o text|json]',
  options: { name: { type: 'string' }, output: { type: 'string', short: 'o', default: 'text' } },
  optionHelp: { name: 'one lab (default: all)', output: 'text or json' },
  async run(values, _p, io) {
    const format = outputFormat('nodemesh lab list', values.output);
    const labs = values.name ? [mustRead(values.name as string)] : listLabs();
    if (format === 'json') {
      io.out(toJson(values.name ? labs[0] : labs));
      return EXIT.ok;
    }
    if (labs.length === 0) {
      io.out('no labs: make one with `nodemesh lab up`\n');
      return EXIT.ok;
    }
    for (const lab of labs) {
      io.out(`lab ${lab.name} (slot ${lab.slot}, bridge ${lab.bridge} ${lab.bridgeIp}, created ${lab.createdAt})\n`);
      const rows = [
        ...lab.nodes.map((n) => [`n${n.index}`, 'node', n.name, n.ip, `/run/netns/${n.netns}`, n.cgroup]),
        ...lab.pods.map((p) => [p.name, 'pod', p.node, p.ip, `/run/netns/${p.netns}`, p.cgroup]),
      ];
      io.out(table(['NAME', 'KIND', 'NODE', 'IP', 'NETNS', 'CGROUP'], rows));
    }
    return EXIT.ok;
  },
});

const exec = defineCommand({
  name: 'exec',
  summary: 'Run a command inside a pod (its netns and cgroup) or a node (its netns)',
  usage: 'lab exec [--name lab] POD|NODE -- COMMAND [ARGS...]',
  description: 'The exit code of COMMAND is passed through. POD is like n1-p2, NODE like n1.',
  options: { name: { type: 'string', default: DEFAULT_NAME } },
  optionHelp: { name: 'lab name' },
  allowPositionals: true,
  async run(values, positionals) {
    const [target, ...argv] = positionals;
    if (!target) throw new UsageError('nodemesh lab exec: which pod? nodemesh lab exec POD -- COMMAND [ARGS...]');
    const lab = mustRead(values.name as string);
    findTarget(lab, target);
    return labExec(lab, target, argv);
  },
});

const demo = defineCommand({
  name: 'demo',
  summary: 'Bring a lab up, show pod traffic steered to the node proxies, tear it down',
  usage: 'lab demo [--name demo]',
  options: { name: { type: 'string', default: 'demo' } },
  optionHelp: { name: 'lab name for the demo' },
  async run(values, _p, io) {
    await untilSignal((signal) => runDemo({ name: values.name as string, out: (l) => io.out(l + '\n'), signal }));
    return EXIT.ok;
  },
});

export const labCommand: Command = {
  name: 'lab',
  summary: 'A cluster in one machine: simulated nodes and pods',
  usage: 'lab <up|down|list|exec|demo> [flags]',
  options: {},
  optionHelp: {},
  subcommands: [up, down, list, exec, demo],
};
