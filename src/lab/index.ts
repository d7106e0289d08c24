export { LabError } from './errors';
export { DEFAULT_LAB_STATE_DIR, findTarget, labDown, labExec, labSpawn, labUp, listLabs, readLab, type DownResult, type LabMesh, type LabState, type UpOptions } from './lab';
export { checkLabName, LAB_NAME_RE, MAX_NODES, MAX_PODS, MAX_SLOTS, ip6Of, planLab, VIP_RANGE, VIP_RANGE6, type LabPlan, type NodePlan, type PodPlan } from './naming';
export { runDemo, type DemoOptions } from './demo';
export { podWorkload } from './mesh';
export { heldLabRoutes, keepLabRoutes, LAB_RANGES } from './host-routes';
