/**
 * The node's own certificate: kept in the proxy's state dir (key 0600), made
 * on first start by joining the controller with a bootstrap token, reused on
 * restarts while valid, renewed through Certificates.Sign at half its life.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { spiffeNodeId } from '../../api/identity';
import { ControllerClient } from '../../controller/client';
import { MeshError } from '../../errors';
import { generateKeyAndCsr } from './csr';

export interface NodeIdentity {
  keyPem: string;
  certPem: string;
  caPem: string;
  trustDomain: string;
  notAfter: Date;
}

export class NodeIdentityError extends MeshError {}

function files(dir: string): { key: string; cert: string; ca: string; meta: string } {
  return { key: path.join(dir, 'node.key'), cert: path.join(dir, 'node.crt'), ca: path.join(dir, 'ca.crt'), meta: path.join(dir, 'node.json') };
}

function writeAtomic(file: string, data: string, mode: number): void {
  const tmp = `${file}.tmp`;
  fs.writeFileSync(tmp, data, { mode });
  fs.renameSync(tmp, file);
}

/** The identity stored in `dir`, if present and valid for at least `minValidMs`. */
export function loadNodeIdentity(dir: string, minValidMs = 60_000): NodeIdentity | undefined {
  const f = files(dir);
  try {
    const certPem = fs.readFileSync(f.cert, 'utf8');
    const notAfter = new Date(new crypto.X509Certificate(certPem).validTo);
    if (notAfter.getTime() - Date.now() < minValidMs) return undefined;
    const meta = JSON.parse(fs.readFileSync(f.meta, 'utf8')) as { trustDomain: string };
    return { keyPem: fs.readFileSync(f.key, 'utf8'), certPem, caPem: fs.readFileSync(f.ca, 'utf8'), trustDomain: meta.trustDomain, notAfter };
  } catch {
    return undefined;
  }
}

function store(dir: string, id: NodeIdentity): void {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const f = files(dir);
  writeAtomic(f.key, id.keyPem, 0o600);
  writeAtomic(f.cert, id.certPem, 0o644);
  writeAtomic(f.ca, id.caPem, 0o644);
  writeAtomic(f.meta, JSON.stringify({ trustDomain: id.trustDomain, notAfter: id.notAfter.toISOString() }) + '\n', 0o644);
}

/** Joins the controller with a bootstrap token and stores the node certificate. */
export async function joinController(opts: { dir: string; node: string; controller: string; token: string; caPem: string; trustDomain?: string }): Promise<NodeIdentity> {
  const anon = new ControllerClient({ address: opts.controller, ca: opts.caPem });
  try {
    const { keyPem, csrPem } = await generateKeyAndCsr(spiffeNodeId(opts.trustDomain ?? 'cluster.local', opts.node));
    const r = await anon.join(opts.token, opts.node, csrPem);
    const id: NodeIdentity = { keyPem, certPem: r.certificateChainPem, caPem: r.trustBundlePem, trustDomain: r.trustDomain, notAfter: new Date(r.expiresUnixMs) };
    store(opts.dir, id);
    return id;
  } finally {
    anon.close();
  }
}

/** Renews the node certificate with the current one; stores the new one. */
export async function renewNodeIdentity(dir: string, node: string, client: ControllerClient, current: NodeIdentity): Promise<NodeIdentity> {
  const { keyPem, csrPem } = await generateKeyAndCsr(spiffeNodeId(current.trustDomain, node));
  const r = await client.sign(csrPem);
  const id: NodeIdentity = { keyPem, certPem: r.certificateChainPem, caPem: r.trustBundlePem, trustDomain: r.trustDomain, notAfter: new Date(r.expiresUnixMs) };
  store(dir, id);
  return id;
}
