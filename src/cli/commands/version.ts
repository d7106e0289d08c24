import { probeFeatures, type FeatureReport } from '../../bpf';
import { VERSION } from '../../version';
import { defineCommand, EXIT } from '../command';
import { outputFormat, toJson } from '../output';

export interface VersionReport {
  nodemesh: string;
  node: string;
  /** The LTS line's codename, null on a Current release. */
  nodeLts: string | null;
  features: FeatureReport;
}

export function versionReport(): VersionReport {
  return { nodemesh: VERSION, node: process.version, nodeLts: (process.release as { lts?: string }).lts ?? null, features: probeFeatures() };
}

function yesNo(r: Record<string, string>): string {
  return Object.entries(r)
    .map(([k, v]) => (v === 'yes' ? k : `${k} (${v})`))
    .join(', ');
}

export function formatVersion(r: VersionReport): string {
  const f = r.features;
  const lines = [
    `nodemesh  ${r.nodemesh}`,
    `Node.js   ${r.node}${r.nodeLts ? ` (LTS ${r.nodeLts})` : ' (not an LTS release)'}`,
    `libbpf    ${f.libbpf ?? 'unavailable'}`,
    `kernel    ${f.kernel}`,
    `BTF       ${f.btf ? '/sys/kernel/btf/vmlinux' : 'missing'}`,
    `cgroup2   ${f.cgroup2 ?? 'not mounted'}`,
    `bpffs     ${f.bpffs ?? 'not mounted'}`,
  ];
  if (Object.keys(f.progTypes).length) lines.push(`programs  ${yesNo(f.progTypes)}`);
  if (Object.keys(f.mapTypes).length) lines.push(`maps      ${yesNo(f.mapTypes)}`);
  lines.push(`BPF       ${f.usable ? 'usable' : 'NOT usable'}`);
  for (const p of f.problems) lines.push(`  - ${p}`);
  return lines.join('\n') + '\n';
}

export const versionCommand = defineCommand({
  name: 'version',
  summary: 'Print versions and whether BPF, cgroup v2 and bpffs are usable here',
  usage: 'version [-o text|json]',
  description:
    'Prints the nodemesh, Node.js, libbpf and kernel versions, then what this host and\n' +
    'process can do: BPF program and map types, the cgroup v2 and bpffs mounts. When\n' +
    'something is missing, each problem is listed with its fix.',
  options: { output: { type: 'string', short: 'o', default: 'text' } },
  optionHelp: { output: 'output format: text or json' },
  async run(values, _positionals, io) {
    const report = versionReport();
    const format = outputFormat('nodemesh version', values.output);
    io.out(format === 'json' ? toJson(report) : formatVersion(report));
    return EXIT.ok;
  },
});
