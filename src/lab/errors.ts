import { MeshError } from '../errors';

/** Lab failures: NM_ERR_LAB_* codes, messages that name the fix. */
export class LabError extends MeshError {}
