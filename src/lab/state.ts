/**
 * What a lab is once it is up, as its state file records it: lab.ts writes
 * it, mesh.ts adds the controller and proxies, both import it from here.
 */
import type { LabPlan } from './naming';

export interface LabState extends LabPlan {
  createdAt: string;
  /** The controller and proxies `lab up` started (absent for a bare lab). */
  mesh?: LabMesh;
}

export interface LabMesh {
  controller: { pid: number; address: string; credentials: string; caFile: string; log: string; metrics: string };
  proxies: { node: string; log: string; stateDir: string; adminSocket: string }[];
}
