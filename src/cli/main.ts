/** The `nodemesh` executable: one binary, kubectl-style subcommands. */
import { MeshError } from '../errors';
import { dispatch, EXIT, type Command, type Io } from './command';

/**
 * Every command, its module loaded when asked for: `nodemesh proxy` runs on
 * every node for as long as the node does, and loads only its own command
 * (the controller's, the lab's and the resource commands' modules are about
 * 2.4 MB of its heap).
 */
export function commands(): Command[] {
  const resources = require('./commands/resources') as typeof import('./commands/resources');
  const proxy = require('./commands/proxy') as typeof import('./commands/proxy');
  const { explainCommand } = require('./commands/explain') as typeof import('./commands/explain');
  const { statusCommand } = require('./commands/status') as typeof import('./commands/status');
  const { controllerCommand } = require('./commands/controller') as typeof import('./commands/controller');
  const { nodeCommand } = require('./commands/node') as typeof import('./commands/node');
  const { labCommand } = require('./commands/lab') as typeof import('./commands/lab');
  const { datapathCommand } = require('./commands/datapath') as typeof import('./commands/datapath');
  const { versionCommand } = require('./commands/version') as typeof import('./commands/version');
  return [resources.applyCommand, resources.getCommand, resources.deleteCommand, proxy.flowsCommand, explainCommand, statusCommand, controllerCommand, nodeCommand, proxy.proxyCommand, labCommand, datapathCommand, versionCommand];
}

const root = (subcommands: Command[]): Command => ({
  name: '',
  summary: 'nodemesh: a service mesh with one proxy per node, steered by eBPF',
  usage: '<command> [flags]',
  options: {},
  optionHelp: {},
  subcommands,
});

const stdio: Io = {
  out: (s) => process.stdout.write(s),
  err: (s) => process.stderr.write(s),
};

export async function main(argv: string[], io: Io = stdio): Promise<number> {
  try {
    const subcommands = argv[0] === 'proxy' ? [(require('./commands/proxy') as typeof import('./commands/proxy')).proxyCommand] : commands();
    return await dispatch(root(subcommands), argv, io, 'nodemesh');
  } catch (err) {
    if (err instanceof MeshError) {
      io.err(`error: ${err.message}\n`);
      return err.code === 'NM_ERR_USAGE' ? EXIT.usage : EXIT.rejected;
    }
    throw err;
  }
}
