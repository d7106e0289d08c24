/** The `nodemesh` executable: one binary, kubectl-style subcommands. */
import { MeshError } from '../errors';
import { dispatch, EXIT, type Command, type Io } from './command';
import { controllerCommand } from './commands/controller';
import { datapathCommand } from './commands/datapath';
import { labCommand } from './commands/lab';
import { nodeCommand } from './commands/node';
import { explainCommand } from './commands/explain';
import { flowsCommand, proxyCommand } from './commands/proxy';
import { applyCommand, deleteCommand, getCommand } from './commands/resources';
import { statusCommand } from './commands/status';
import { versionCommand } from './commands/version';

export const COMMANDS: Command[] = [applyCommand, getCommand, deleteCommand, flowsCommand, explainCommand, statusCommand, controllerCommand, nodeCommand, proxyCommand, labCommand, datapathCommand, versionCommand];

const root: Command = {
  name: '',
  summary: 'nodemesh: a service mesh with one proxy per node, steered by eBPF',
  usage: '<command> [flags]',
  options: {},
  optionHelp: {},
  subcommands: COMMANDS,
};

const stdio: Io = {
  out: (s) => process.stdout.write(s),
  err: (s) => process.stderr.write(s),
};

export async function main(argv: string[], io: Io = stdio): Promise<number> {
  try {
    return await dispatch(root, argv, io, 'nodemesh');
  } catch (err) {
    if (err instanceof MeshError) {
      io.err(`error: ${err.message}\n`);
      return err.code === 'NM_ERR_USAGE' ? EXIT.usage : EXIT.rejected;
    }
    throw err;
  }
}
