/**
 * Identities as nodemesh spells them, in one place for the controller (its CA
 * issues them) and the proxy (its tunnels check them): SPIFFE IDs and
 * certificate serial numbers.
 */
import { MeshError } from '../errors';

/** A SPIFFE ID or trust domain that does not follow the SPIFFE spec (NM_ERR_CA_BAD_ID). */
export class IdentityError extends MeshError {}

// SPIFFE IDs (https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md)

const TRUST_DOMAIN_RE = /^[a-z0-9._-]{1,255}$/;
const SEGMENT_RE = /^[A-Za-z0-9._-]+$/;
const SPIFFE_PREFIX = 'spiffe://';
const SPIFFE_MAX_LEN = 2048;

/** Throws IdentityError unless `trustDomain` is one a SPIFFE ID may carry. */
export function checkTrustDomain(trustDomain: string): void {
  if (typeof trustDomain !== 'string' || !TRUST_DOMAIN_RE.test(trustDomain)) {
    throw new IdentityError(
      'NM_ERR_CA_BAD_ID',
      `trust domain ${JSON.stringify(trustDomain)} is invalid (use 1-255 characters of a-z 0-9 . - _, e.g. "cluster.local")`,
    );
  }
}

function checkSegment(what: string, value: string): void {
  if (typeof value !== 'string' || !SEGMENT_RE.test(value) || value === '.' || value === '..') {
    throw new IdentityError(
      'NM_ERR_CA_BAD_ID',
      `${what} ${JSON.stringify(value)} cannot be a SPIFFE path segment (use A-Z a-z 0-9 . - _, not "." or "..")`,
    );
  }
}

/** spiffe://TD/ns/NS/sa/SA, Istio's layout, so policies written for Istio port unchanged. */
export function spiffeWorkloadId(trustDomain: string, namespace: string, serviceAccount: string): string {
  checkTrustDomain(trustDomain);
  checkSegment('namespace', namespace);
  checkSegment('service account', serviceAccount);
  return `${SPIFFE_PREFIX}${trustDomain}/ns/${namespace}/sa/${serviceAccount}`;
}

/** spiffe://TD/nodemesh/node/NAME: outside /ns/ so no workload can ever be given a node's identity. */
export function spiffeNodeId(trustDomain: string, node: string): string {
  checkTrustDomain(trustDomain);
  checkSegment('node name', node);
  return `${SPIFFE_PREFIX}${trustDomain}/nodemesh/node/${node}`;
}

export function spiffeAdminId(trustDomain: string): string {
  checkTrustDomain(trustDomain);
  return `${SPIFFE_PREFIX}${trustDomain}/nodemesh/admin`;
}

/**
 * Parses a SPIFFE ID strictly (lowercase scheme and trust domain, no port,
 * userinfo, query, fragment, empty or dot segments). `path` is '' or starts
 * with '/'. namespace/serviceAccount are set only for /ns/NS/sa/SA.
 */
export function parseSpiffeId(
  uri: string,
): { trustDomain: string; path: string; namespace?: string; serviceAccount?: string } | null {
  if (typeof uri !== 'string' || uri.length > SPIFFE_MAX_LEN || !uri.startsWith(SPIFFE_PREFIX)) return null;
  const rest = uri.slice(SPIFFE_PREFIX.length);
  const slash = rest.indexOf('/');
  const trustDomain = slash === -1 ? rest : rest.slice(0, slash);
  const idPath = slash === -1 ? '' : rest.slice(slash);
  if (!TRUST_DOMAIN_RE.test(trustDomain)) return null;
  if (idPath !== '') {
    const segments = idPath.slice(1).split('/');
    for (const s of segments) {
      if (!SEGMENT_RE.test(s) || s === '.' || s === '..') return null;
    }
    if (segments.length === 4 && segments[0] === 'ns' && segments[2] === 'sa') {
      return { trustDomain, path: idPath, namespace: segments[1], serviceAccount: segments[3] };
    }
  }
  return { trustDomain, path: idPath };
}

/**
 * A workload's SPIFFE ID from parts already checked (the controller's
 * validation admitted its namespace and service account): no checks, as the
 * registry and every proxy derive it for each of 50,000 workloads.
 */
export function workloadIdentity(trustDomain: string, namespace: string, serviceAccount: string): string {
  return `${SPIFFE_PREFIX}${trustDomain}/ns/${namespace}/sa/${serviceAccount}`;
}

/**
 * One spelling of a certificate serial number for every comparison (the
 * revocation list, the store, TLS peers): node:crypto prints uppercase hex,
 * the CA lowercase, and either may drop a leading zero.
 */
export function normalizeSerial(serial: string): string {
  return serial.toLowerCase().replace(/^0+(?=.)/, '');
}
