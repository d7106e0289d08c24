/**
 * How a workload identity is named inside the tunnel's TLS handshake.
 *
 * SNI: the client names the destination workload's SPIFFE ID, so one node
 * proxy can present a different certificate per workload it fronts. SNI must
 * be a DNS host name (RFC 6066 §3), so the ID is written as
 *
 *     spiffe://TD/ns/NS/sa/SA   <->   SA.NS.sa.TD.spiffe
 *
 * e.g. `web.default.sa.cluster.local.spiffe`. SA and NS are one label each
 * and TD may have several; the fixed `sa` label and the final `spiffe` label
 * make the split unambiguous and keep these names apart from real host names.
 * Only identities whose service account and namespace are DNS labels
 * (RFC 1123: lowercase letters, digits and inner hyphens, 1-63 characters) and
 * whose trust domain is a DNS name of such labels fit; the result is at most
 * 253 characters. Kubernetes namespaces always fit; a service account or trust
 * domain with dots, underscores or capitals (legal in SPIFFE) does not, and is
 * refused rather than mangled, since the server must recover exactly the ID
 * the client meant.
 *
 * URI SAN: the peer's identity is the one URI SAN of its certificate, read
 * with the same X.509 library as the CA (node:crypto only offers SANs as an
 * escaped display string).
 */
// @peculiar/x509 resolves its algorithms through tsyringe, which refuses to
// load without a Reflect metadata polyfill: this import must come first.
import 'reflect-metadata';

import * as x509 from '@peculiar/x509';

import { parseSpiffeId } from '../../api/identity';
import { MeshError } from '../../errors';

const MARKER = 'spiffe';
const SA_LABEL = 'sa';
const MAX_SNI = 253;
const DNS_LABEL_RE = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

function isDnsLabel(s: string): boolean {
  return DNS_LABEL_RE.test(s);
}

/**
 * The SNI host name for a workload SPIFFE ID. Throws MeshError
 * NM_ERR_TUNNEL_BAD_IDENTITY when the ID has no such name (see above).
 */
export function identityToSni(identity: string): string {
  const id = parseSpiffeId(identity);
  const bad = (why: string): MeshError =>
    new MeshError('NM_ERR_TUNNEL_BAD_IDENTITY', `hbone: ${JSON.stringify(identity)} cannot be sent as TLS SNI: ${why}`);
  if (!id || id.namespace === undefined || id.serviceAccount === undefined) {
    throw bad('it is not a workload SPIFFE ID (expected spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT)');
  }
  if (!isDnsLabel(id.namespace) || !isDnsLabel(id.serviceAccount)) {
    throw bad('namespace and service account must be DNS labels (lowercase a-z, 0-9 and inner "-", at most 63 characters)');
  }
  if (!id.trustDomain.split('.').every(isDnsLabel)) {
    throw bad('the trust domain must be a DNS name (dot-separated labels of lowercase a-z, 0-9 and inner "-")');
  }
  const sni = `${id.serviceAccount}.${id.namespace}.${SA_LABEL}.${id.trustDomain}.${MARKER}`;
  if (sni.length > MAX_SNI) throw bad(`its SNI form would be ${sni.length} characters, over the DNS limit of ${MAX_SNI}`);
  return sni;
}

/** The workload SPIFFE ID an SNI host name names, or undefined when it is not exactly identityToSni's output. */
export function sniToIdentity(sni: string): string | undefined {
  if (typeof sni !== 'string' || sni.length > MAX_SNI) return undefined;
  const labels = sni.split('.');
  // SA, NS, "sa", at least one trust-domain label, marker.
  if (labels.length < 5 || labels[labels.length - 1] !== MARKER || labels[2] !== SA_LABEL) return undefined;
  if (!labels.every(isDnsLabel)) return undefined;
  const identity = `spiffe://${labels.slice(3, -1).join('.')}/ns/${labels[1]}/sa/${labels[0]}`;
  return parseSpiffeId(identity) ? identity : undefined;
}

/**
 * The URI SANs of a DER certificate, in order. An unreadable certificate or
 * SAN yields [], which every caller treats as "no identity".
 */
export function certificateUris(der: Buffer | ArrayBuffer): string[] {
  try {
    const san = new x509.X509Certificate(der).getExtension(x509.SubjectAlternativeNameExtension);
    return san ? san.names.items.filter((n) => n.type === 'url').map((n) => n.value) : [];
  } catch {
    return [];
  }
}
