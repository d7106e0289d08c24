/** One line per flow, for `nodemesh flows` and the demo. */
import type { Flow } from './flow-table';

function kb(n: number): string {
  return n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KB` : `${(n / 1048576).toFixed(1)} MB`;
}

export function formatFlow(f: Flow): string {
  const who = f.source.namespace && f.source.workload ? `${f.source.namespace}/${f.source.workload}` : (f.source.identity ?? 'unknown');
  // Port 0: the destination of a tunnel learns the client's address, not its port.
  const src = f.source.ip ? `${who} (${f.source.port ? `${f.source.ip}:${f.source.port}` : f.source.ip})` : who;
  const svc = f.destination.service ? `${f.destination.namespace ?? ''}/${f.destination.service}` : f.destination.originalAddress;
  const dst = `${svc}${f.destination.workload ? ` -> ${f.destination.workload} ${f.destination.address}` : f.destination.address && f.destination.address !== f.destination.originalAddress ? ` -> ${f.destination.address}` : ''}`;
  const verdict = f.verdict.toUpperCase();
  const why = f.policy ? `${f.reason} (${f.policy})` : f.reason;
  const bytes = f.end ? `${kb(f.bytesSent)} out, ${kb(f.bytesReceived)} in, ${f.durationMs} ms, ${f.closeReason}` : 'open';
  const node = f.drainingPid ? `${f.node} (draining pid ${f.drainingPid})` : f.node;
  return `${f.start}  ${node}  ${src} -> ${dst}  ${verdict}  ${why}${f.security === 'mutual_tls' ? '  mTLS' : ''}  ${bytes}`;
}

