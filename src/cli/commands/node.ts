/** `nodemesh node list|revoke`: the nodes that joined, their certificates, and cutting one off. */
import { defineCommand, EXIT, UsageError, type Command } from '../command';
import { configState, nodeProblem } from '../node-health';
import { outputFormat, table, toJson } from '../output';
import { credentialsHelp, credentialsOption, withAdmin } from './controller';

function isoTime(ms: number): string {
  return ms ? new Date(ms).toISOString() : '-';
}

const nodeList = defineCommand({
  name: 'list',
  summary: 'Nodes that joined: connected or not, what config they hold, node certificate serial and expiry, revoked or not, last stream error',
  usage: 'node list [-o text|json]',
  options: { output: { type: 'string', short: 'o', default: 'text' }, ...credentialsOption },
  optionHelp: { output: 'text or json', ...credentialsHelp },
  async run(values, _p, io) {
    const format = outputFormat('nodemesh node list', values.output);
    return withAdmin(values, io, async (c) => {
      const nodes = await c.listNodes();
      if (format === 'json') {
        io.out(toJson(nodes));
        return EXIT.ok;
      }
      if (nodes.length === 0) {
        io.err('no node has joined this controller\n');
        return EXIT.ok;
      }
      const now = Date.now();
      io.out(
        table(
          ['NODE', 'STATUS', 'CONNECTED', 'CONFIG', 'CERTIFICATE', 'EXPIRES', 'WORKLOAD CERTS', 'JOINED', 'LAST ERROR'],
          nodes.map((n) => [
            n.node,
            n.revoked ? `revoked ${isoTime(n.revokedUnixMs)}` : 'active',
            n.connected ? 'yes' : 'no',
            configState(n),
            n.certificateSerial || '-',
            isoTime(n.certificateExpiresUnixMs),
            n.workloadCertificates,
            isoTime(n.joinedUnixMs),
            nodeProblem(n, now),
          ]),
        ),
      );
      return EXIT.ok;
    });
  },
});

const nodeRevoke = defineCommand({
  name: 'revoke',
  summary: "Revoke a node: its certificates stop working for the controller and for every peer's tunnels",
  usage: 'node revoke NAME',
  description:
    'The controller refuses the node at once (its open config stream ends with PERMISSION_DENIED,\n' +
    'renewals are refused), deletes its unused tokens, and pushes the serials of its unexpired\n' +
    'node and workload certificates to every node, whose tunnels then refuse them. The node joins\n' +
    'again only with a new token made for it: nodemesh controller token create --node NAME.',
  allowPositionals: true,
  options: { ...credentialsOption },
  optionHelp: { ...credentialsHelp },
  async run(values, positionals, io) {
    if (positionals.length !== 1 || !positionals[0]) throw new UsageError('nodemesh node revoke: give exactly one node name (see `nodemesh node list`)');
    const node = positionals[0];
    return withAdmin(values, io, async (c) => {
      const serials = await c.revokeNode(node);
      io.out(`node ${node} revoked: ${serials.length} certificate${serials.length === 1 ? '' : 's'} on the revocation list\n`);
      return EXIT.ok;
    });
  },
});

export const nodeCommand: Command = {
  name: 'node',
  summary: 'Nodes of the mesh: list them, revoke one',
  usage: 'node <list|revoke> [flags]',
  options: {},
  optionHelp: {},
  subcommands: [nodeList, nodeRevoke],
};
