/**
 * Where an outbound connection goes, decided from the config alone (no I/O):
 * a Service VIP and port -> that service; a mesh workload's address -> it;
 * anything else -> straight through (ALLOW_ANY) or refused (REGISTRY_ONLY).
 */
import type { ServicePort } from '../../api/kinds';
import type { MeshView, ServiceView, WorkloadView } from '../state';

export type OutboundPlan =
  | { kind: 'service'; service: ServiceView; port: ServicePort; targetPort: number }
  | { kind: 'workload'; workload: WorkloadView; port: number }
  | { kind: 'passthrough'; ip: string; port: number }
  | { kind: 'refuse'; reason: 'registry-only' };

export function planOutbound(view: MeshView, dest: { ip: string; port: number }): OutboundPlan {
  const svc = view.serviceAt(dest.ip, dest.port);
  if (svc) return { kind: 'service', service: svc.service, port: svc.port, targetPort: svc.port.targetPort ?? svc.port.port };
  const w = view.workloadAt(dest.ip);
  if (w) return { kind: 'workload', workload: w, port: dest.port };
  if (view.mesh.outboundTrafficPolicy.mode === 'REGISTRY_ONLY') return { kind: 'refuse', reason: 'registry-only' };
  return { kind: 'passthrough', ip: dest.ip, port: dest.port };
}
