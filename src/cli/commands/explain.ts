/** nodemesh explain: which policies decide a connection, and how, with the proxy's own evaluate(). */
import * as net from 'node:net';

import { workloadIdentity } from '../../api/identity';
import type { AuthorizationPolicy, MeshConfigSpec, Resource, ServiceSpec, WorkloadSpec } from '../../api/kinds';
import { labelSelectorMatches } from '../../api/selectors';
import { explainConnection } from '../../node-proxy/policy';
import { defineCommand, EXIT, UsageError } from '../command';
import { toJson } from '../output';
import { withAdmin } from './controller';

type Workload = Resource<'Workload', WorkloadSpec>;
type Service = Resource<'Service', ServiceSpec>;

function split(ref: string, ns: string): { namespace: string; name: string } {
  const [a, b] = ref.split('/');
  return b === undefined ? { namespace: ns, name: a! } : { namespace: a!, name: b };
}

export const explainCommand = defineCommand({
  name: 'explain',
  summary: 'Which authorization policies decide a connection, the verdict, and the rule that decided',
  usage: 'explain --from POD|SPIFFE-ID --to SERVICE[:PORT]|POD:PORT [-n NS] [-o text|json]',
  description:
    'POD and SERVICE are names in -n NS, or NS/NAME. The verdict comes from the same evaluate()\n' +
    'the proxies run, over the policies the controller holds now.',
  options: {
    from: { type: 'string' },
    to: { type: 'string' },
    namespace: { type: 'string', short: 'n', default: 'default' },
    output: { type: 'string', short: 'o', default: 'text' },
    credentials: { type: 'string' },
    controller: { type: 'string' },
  },
  optionHelp: { from: 'source workload, or its SPIFFE ID', to: 'destination service (and port), or workload:port', namespace: 'namespace of unqualified names', output: 'text or json', credentials: 'admin credentials file', controller: 'controller address IP:PORT' },
  async run(values, _p, io) {
    const from = values.from as string | undefined;
    const to = values.to as string | undefined;
    if (!from || !to) throw new UsageError('nodemesh explain: --from and --to are required');
    const ns = values.namespace as string;
    return withAdmin(values, io, async (c) => {
      const [workloads, services, policies, meshes] = await Promise.all([
        c.list('workloads', { allNamespaces: true }),
        c.list('services', { allNamespaces: true }),
        c.list('authorizationpolicies', { allNamespaces: true }),
        c.list('meshconfigs'),
      ]);
      const td = (meshes.items[0]?.spec as Partial<MeshConfigSpec> | undefined)?.trustDomain ?? 'cluster.local';
      const wls = workloads.items as Workload[];
      const identity = (w: Workload): string => workloadIdentity(td, w.metadata.namespace ?? 'default', w.spec.serviceAccount);

      // Source.
      let source: { label: string; principal: string; namespace?: string; ip: string };
      if (from.startsWith('spiffe://') || /\/ns\/[^/]+\/sa\//.test(from)) {
        const principal = from.startsWith('spiffe://') ? from : `spiffe://${from}`;
        source = { label: principal, principal, namespace: /\/ns\/([^/]+)\//.exec(principal)?.[1], ip: '0.0.0.0' };
      } else {
        const ref = split(from, ns);
        const w = wls.find((x) => x.metadata.namespace === ref.namespace && x.metadata.name === ref.name);
        if (!w) throw new UsageError(`nodemesh explain: no workload ${ref.namespace}/${ref.name} (see nodemesh get workloads -A), and it is not a SPIFFE ID`);
        source = { label: `${ref.namespace}/${ref.name}`, principal: identity(w), namespace: ref.namespace, ip: w.spec.addresses[0] ?? '0.0.0.0' };
      }

      // Destination: a service (and port) or a workload:port.
      const m = /^(.*?)(?::(\d+))?$/.exec(to)!;
      const ref = split(m[1]!, ns);
      const port = m[2] ? Number(m[2]) : undefined;
      let targets: Workload[];
      let dstLabel: string;
      let targetPort: number;
      const svc = (services.items as Service[]).find((s) => s.metadata.namespace === ref.namespace && s.metadata.name === ref.name);
      if (svc) {
        const sp = port === undefined ? svc.spec.ports[0] : svc.spec.ports.find((p) => p.port === port);
        if (!sp) throw new UsageError(`nodemesh explain: service ${ref.namespace}/${ref.name} has no port ${port} (ports: ${svc.spec.ports.map((p) => p.port).join(', ')})`);
        targetPort = sp.targetPort ?? sp.port;
        targets = wls.filter((w) => w.metadata.namespace === ref.namespace && labelSelectorMatches(svc.spec.selector, w.metadata.labels));
        dstLabel = `service ${ref.namespace}/${ref.name} port ${sp.port}${targetPort !== sp.port ? ` -> ${targetPort}` : ''}`;
        if (targets.length === 0) throw new UsageError(`nodemesh explain: service ${ref.namespace}/${ref.name} selects no workload (selector ${JSON.stringify(svc.spec.selector)})`);
      } else {
        const w = wls.find((x) => x.metadata.namespace === ref.namespace && x.metadata.name === ref.name);
        if (!w) throw new UsageError(`nodemesh explain: no service or workload ${ref.namespace}/${ref.name} (see nodemesh get services -A, nodemesh get workloads -A)`);
        if (port === undefined) throw new UsageError(`nodemesh explain: give the port of workload ${ref.namespace}/${ref.name}: --to ${ref.name}:PORT`);
        targets = [w];
        targetPort = port;
        dstLabel = `workload ${ref.namespace}/${ref.name} port ${port}`;
      }

      const results = targets.map((w) => {
        const ip = w.spec.addresses.find((a) => net.isIPv4(a)) ?? w.spec.addresses[0]!;
        const e = explainConnection(
          { source: { principal: source.principal, namespace: source.namespace, ip: source.ip }, destination: { namespace: w.metadata.namespace!, labels: w.metadata.labels ?? {}, ip, port: targetPort } },
          policies.items as AuthorizationPolicy[],
        );
        return { workload: `${w.metadata.namespace}/${w.metadata.name}`, node: w.spec.node, ...e };
      });
      if (values.output === 'json') {
        io.out(toJson({ source, destination: dstLabel, results }));
        return EXIT.ok;
      }
      io.out(`from  ${source.label} (${source.principal})\nto    ${dstLabel}\n`);
      for (const r of results) {
        io.out(`\n  ${r.workload} on ${r.node}\n`);
        io.out(`    policies selecting it: ${r.applicable.length ? r.applicable.map((a) => `${a.policy} (${a.action})`).join(', ') : 'none'}\n`);
        const d = r.decision;
        const by = d.policy ? ` by ${d.policy}${r.rule !== undefined ? ` rule ${r.rule}` : ''}` : '';
        io.out(`    verdict: ${d.allowed ? 'ALLOWED' : 'DENIED'} (${d.reason}${by})\n`);
        if (d.considered?.length) io.out(`    ALLOW policies that did not match: ${d.considered.join(', ')}\n`);
        if (d.audit.length) io.out(`    audited by: ${d.audit.join(', ')}\n`);
      }
      return EXIT.ok;
    });
  },
});
