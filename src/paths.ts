import * as path from 'node:path';

/** The package root (this file compiles to dist/src/paths.js). */
export const PACKAGE_ROOT = path.resolve(__dirname, '..', '..');

/** Where `npm run build` writes the BPF objects (bpf/*.bpf.c → *.bpf.o). */
export const BPF_BUILD_DIR = path.join(PACKAGE_ROOT, 'build', 'bpf');

/** The libbpf addon built by cmake-js. */
export const ADDON_PATH = path.join(PACKAGE_ROOT, 'build', 'native', 'Release', 'nodemesh_bpf.node');

/** Path of a BPF object built from bpf/<name>.bpf.c. */
export function bpfObjectPath(name: string): string {
  return path.join(BPF_BUILD_DIR, `${name}.bpf.o`);
}
