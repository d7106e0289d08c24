/**
 * The cluster's certificate authority: one ECDSA P-256 root that signs
 * short-lived leaf certificates carrying SPIFFE URI SANs (see
 * docs/architecture.md, 'Certificates and identity').
 *
 * All X.509 encoding goes through @peculiar/x509 over Node's WebCrypto; the
 * only ASN.1 this file sees is the library's. `verifyPeer` is synchronous
 * (node:crypto X509Certificate) because TLS handlers call it inline.
 */
// @peculiar/x509 resolves its algorithms through tsyringe, which refuses to
// load without a Reflect metadata polyfill: this import must come first.
import 'reflect-metadata';

import * as x509 from '@peculiar/x509';
import {
  createPrivateKey,
  createPublicKey,
  randomBytes,
  webcrypto,
  X509Certificate as NodeX509,
  type KeyObject,
} from 'node:crypto';
import * as fs from 'node:fs/promises';
import { isIP } from 'node:net';
import * as path from 'node:path';

import { MeshError } from '../../errors';
import { checkTrustDomain as checkIdTrustDomain, IdentityError, normalizeSerial, parseSpiffeId } from '../../api/identity';

x509.cryptoProvider.set(webcrypto);

export type CaErrorCode =
  | 'NM_ERR_CA_LOAD' // ca.crt / ca.key missing, unreadable, unparsable or not a usable root
  | 'NM_ERR_CA_KEY_MISMATCH' // ca.key is not the key of ca.crt
  | 'NM_ERR_CA_EXPIRED' // the root is past its notAfter
  | 'NM_ERR_CA_BAD_CSR' // the CSR cannot be parsed, its signature fails, or it asks for names we never issue
  | 'NM_ERR_CA_REFUSED' // the CSR is well formed but the identity is not allowed
  | 'NM_ERR_CA_UNTRUSTED' // verifyPeer: not a valid leaf of this root
  | 'NM_ERR_CA_BAD_ID' // a SPIFFE ID or trust domain that does not follow the SPIFFE spec
  | 'NM_ERR_CA_BAD_ARGUMENT';

export class CaError extends MeshError {
  declare readonly code: CaErrorCode;

  constructor(code: CaErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

export interface IssuedCertificate {
  certPem: string;
  /** Leaf then root: what a TLS endpoint presents. */
  chainPem: string;
  notBefore: Date;
  notAfter: Date;
  /** Lowercase hex, as `verifyPeer` reports it. */
  serial: string;
  uris: string[];
}

export type CertificateKind = 'workload' | 'node' | 'client' | 'server';

export interface SignCsrOptions {
  /** Seconds; a function gets the kind chosen (see `kind`). */
  lifetimeSeconds: number | ((kind: CertificateKind) => number);
  /** Returns a refusal reason, or null to allow. Called only after the CSR has been verified. */
  allowedUris: (uris: string[]) => string | null;
  /**
   * What to issue. A function picks it from the CSR's one URI (a node that
   * asks for either a workload certificate or its own renewal); it may only
   * pick among the URI-only kinds.
   */
  kind: CertificateKind | ((uri: string) => 'workload' | 'node' | 'client');
}

// SPIFFE IDs are the api's (src/api/identity.ts): the proxy parses them too, without the CA.
export { parseSpiffeId, spiffeAdminId, spiffeNodeId, spiffeWorkloadId } from '../../api/identity';

/** A CA given a bad trust domain says so as the CA (CaError NM_ERR_CA_BAD_ID). */
function checkTrustDomain(trustDomain: string): void {
  try {
    checkIdTrustDomain(trustDomain);
  } catch (err) {
    if (err instanceof IdentityError) throw new CaError('NM_ERR_CA_BAD_ID', err.message);
    throw err;
  }
}

// ---------------------------------------------------------------------------
// The CA

const EC_KEY_ALG = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGNING_ALG = { name: 'ECDSA', hash: 'SHA-256' } as const;
const ROOT_LIFETIME_YEARS = 10;
// Backdating covers peers whose clocks run a little behind ours; without it a
// fresh certificate is "not yet valid" to them for a few seconds.
const CLOCK_SKEW_MS = 60_000;
const MAX_CSR_CHARS = 64 * 1024;
const SAN_OID = '2.5.29.17';
// Labels of letters, digits and hyphens; a leading "*." wildcard is allowed for server names.
const DNS_NAME_RE = /^(\*\.)?[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})*$/;

const EKU_BY_KIND: Record<CertificateKind, string[]> = {
  workload: [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth],
  node: [x509.ExtendedKeyUsage.clientAuth],
  client: [x509.ExtendedKeyUsage.clientAuth],
  server: [x509.ExtendedKeyUsage.serverAuth],
};

type SanEntry = { type: 'url' | 'dns' | 'ip'; value: string };

interface Leaf {
  publicKey: x509.PublicKey | webcrypto.CryptoKey;
  commonName?: string;
  sans: SanEntry[];
  lifetimeSeconds: number;
  kind: CertificateKind;
}

/** Whole seconds: X.509 times carry no milliseconds, and the returned dates must equal the certificate's. */
function wholeSeconds(ms: number): Date {
  return new Date(Math.floor(ms / 1000) * 1000);
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** 16 random bytes, first byte in 0x01..0x7f: positive and minimally DER-encoded at full length. */
function randomSerial(): string {
  const b = randomBytes(16);
  b[0] = b[0]! & 0x7f || 0x01;
  return b.toString('hex');
}

function isP256(key: KeyObject): boolean {
  return key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1';
}

function lifetimeOk(seconds: number): boolean {
  return Number.isSafeInteger(seconds) && seconds > 0;
}

/** Writes `data` to `file` via a temp file and rename, so a crash leaves either nothing or the whole file. */
async function writeAtomic(file: string, data: string, mode: number): Promise<void> {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  const fh = await fs.open(tmp, 'wx', mode);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await fs.rename(tmp, file);
  } catch (err) {
    await fs.rm(tmp, { force: true });
    throw err;
  }
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function exists(file: string): Promise<boolean> {
  try {
    await fs.access(file);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw new CaError('NM_ERR_CA_LOAD', `ca: cannot access ${file}: ${messageOf(err)} (check the directory's permissions)`);
  }
}

export class CertificateAuthority {
  readonly trustDomain: string;
  readonly rootPem: string;

  // Parsed once at load: signing and verifying do no per-call parsing of the root.
  readonly #root: x509.X509Certificate;
  readonly #rootNode: NodeX509;
  readonly #rootPublicKey: KeyObject;
  readonly #signingKey: webcrypto.CryptoKey;
  readonly #aki: x509.AuthorityKeyIdentifierExtension;
  readonly #rootNotAfterMs: number;

  private constructor(init: {
    trustDomain: string;
    root: x509.X509Certificate;
    rootNode: NodeX509;
    signingKey: webcrypto.CryptoKey;
    aki: x509.AuthorityKeyIdentifierExtension;
  }) {
    this.trustDomain = init.trustDomain;
    this.#root = init.root;
    this.#rootNode = init.rootNode;
    this.#rootPublicKey = init.rootNode.publicKey;
    this.#signingKey = init.signingKey;
    this.#aki = init.aki;
    this.rootPem = init.root.toString('pem') + '\n';
    this.#rootNotAfterMs = init.root.notAfter.getTime();
  }

  /**
   * Loads dir/ca.crt + dir/ca.key, or creates a new self-signed root there
   * when neither exists. Exactly one of them present is an error: silently
   * making a new root would invalidate every certificate in the mesh.
   */
  static async loadOrCreate(dir: string, opts: { trustDomain: string }): Promise<CertificateAuthority> {
    checkTrustDomain(opts.trustDomain);
    const certPath = path.join(dir, 'ca.crt');
    const keyPath = path.join(dir, 'ca.key');
    const [haveCert, haveKey] = await Promise.all([exists(certPath), exists(keyPath)]);
    if (haveCert !== haveKey) {
      const [present, missing] = haveCert ? [certPath, keyPath] : [keyPath, certPath];
      throw new CaError(
        'NM_ERR_CA_LOAD',
        `ca: found ${present} but not ${missing} (restore ${missing} from backup, or remove ${present} to create a new root; a new root invalidates every issued certificate)`,
      );
    }
    if (!haveCert) await CertificateAuthority.#createRoot(dir, certPath, keyPath, opts.trustDomain);
    return CertificateAuthority.#load(certPath, keyPath, opts.trustDomain, 'loadOrCreate');
  }

  /** An operator-provided root: it must be a self-signed ECDSA P-256 CA certificate with its key. */
  static async fromFiles(certPath: string, keyPath: string, opts: { trustDomain: string }): Promise<CertificateAuthority> {
    checkTrustDomain(opts.trustDomain);
    return CertificateAuthority.#load(certPath, keyPath, opts.trustDomain, 'fromFiles');
  }

  static async #createRoot(dir: string, certPath: string, keyPath: string, trustDomain: string): Promise<void> {
    const keys = (await webcrypto.subtle.generateKey(EC_KEY_ALG, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
    const now = Date.now();
    const notAfter = new Date(now);
    notAfter.setUTCFullYear(notAfter.getUTCFullYear() + ROOT_LIFETIME_YEARS);
    const root = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: randomSerial(),
      name: [{ CN: [`nodemesh root CA ${trustDomain}`] }],
      // Backdated like the leaves, so a leaf's notBefore never precedes its issuer's.
      notBefore: wholeSeconds(now - CLOCK_SKEW_MS),
      notAfter: wholeSeconds(notAfter.getTime()),
      keys,
      signingAlgorithm: SIGNING_ALG,
      extensions: [
        new x509.BasicConstraintsExtension(true, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ],
    });
    const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
    const keyPem = x509.PemConverter.encode(pkcs8, 'PRIVATE KEY') + '\n';
    try {
      await fs.mkdir(dir, { recursive: true, mode: 0o700 });
      // Key before certificate: loadOrCreate treats a lone ca.key as an error, never as "create".
      await writeAtomic(keyPath, keyPem, 0o600);
      await writeAtomic(certPath, root.toString('pem') + '\n', 0o644);
      await fsyncDir(dir);
    } catch (err) {
      if (err instanceof CaError) throw err;
      throw new CaError('NM_ERR_CA_LOAD', `ca: cannot write a new root to ${dir}: ${messageOf(err)} (check that the directory is writable)`, {
        cause: err,
      });
    }
  }

  static async #load(certPath: string, keyPath: string, trustDomain: string, via: 'loadOrCreate' | 'fromFiles'): Promise<CertificateAuthority> {
    const fixCert =
      via === 'loadOrCreate'
        ? `restore it from backup, or remove both ca.crt and ca.key from ${path.dirname(certPath)} to create a new root`
        : 'provide a PEM-encoded self-signed ECDSA P-256 CA certificate';
    const fixKey =
      via === 'loadOrCreate'
        ? `restore it from backup, or remove both ca.crt and ca.key from ${path.dirname(keyPath)} to create a new root`
        : 'provide the unencrypted PKCS#8 (or SEC1) PEM private key of the CA certificate';

    let certText: string;
    let keyText: string;
    try {
      [certText, keyText] = await Promise.all([fs.readFile(certPath, 'utf8'), fs.readFile(keyPath, 'utf8')]);
    } catch (err) {
      const file = (err as NodeJS.ErrnoException).path ?? `${certPath} or ${keyPath}`;
      throw new CaError('NM_ERR_CA_LOAD', `ca: cannot read ${file}: ${messageOf(err)} (check that it exists and is readable)`, { cause: err });
    }

    let root: x509.X509Certificate;
    let rootNode: NodeX509;
    try {
      root = new x509.X509Certificate(certText);
      rootNode = new NodeX509(certText);
    } catch (err) {
      throw new CaError('NM_ERR_CA_LOAD', `ca: cannot parse ${certPath} as a PEM certificate: ${messageOf(err)} (${fixCert})`, { cause: err });
    }
    if (!rootNode.ca) {
      throw new CaError('NM_ERR_CA_LOAD', `ca: ${certPath} is not a CA certificate (basicConstraints CA:true missing) (${fixCert})`);
    }
    if (!isP256(rootNode.publicKey)) {
      throw new CaError('NM_ERR_CA_LOAD', `ca: ${certPath} does not hold an ECDSA P-256 key; nodemesh signs with P-256 only (${fixCert})`);
    }
    if (!rootNode.checkIssued(rootNode) || !rootNode.verify(rootNode.publicKey)) {
      throw new CaError(
        'NM_ERR_CA_LOAD',
        `ca: ${certPath} is not self-signed; peers are given this certificate as their only trust anchor, so it must be the root itself (${fixCert})`,
      );
    }
    const ku = root.getExtension(x509.KeyUsagesExtension);
    if (ku && (ku.usages & x509.KeyUsageFlags.keyCertSign) === 0) {
      throw new CaError('NM_ERR_CA_LOAD', `ca: ${certPath} has a keyUsage without keyCertSign, so it may not sign certificates (${fixCert})`);
    }
    if (root.notAfter.getTime() <= Date.now()) {
      throw new CaError(
        'NM_ERR_CA_EXPIRED',
        `ca: the root in ${certPath} expired at ${root.notAfter.toISOString()} (replace it with a new root and reissue every certificate)`,
      );
    }

    let privateKey: KeyObject;
    try {
      privateKey = createPrivateKey({ key: keyText, format: 'pem' });
    } catch (err) {
      // The library's message is about the format, never the key material.
      throw new CaError('NM_ERR_CA_LOAD', `ca: cannot parse ${keyPath} as an unencrypted PEM private key: ${messageOf(err)} (${fixKey})`, {
        cause: err,
      });
    }
    if (!isP256(privateKey)) {
      throw new CaError('NM_ERR_CA_LOAD', `ca: ${keyPath} is not an ECDSA P-256 key (${fixKey})`);
    }
    const spkiOfKey = createPublicKey(privateKey).export({ type: 'spki', format: 'der' });
    const spkiOfCert = rootNode.publicKey.export({ type: 'spki', format: 'der' });
    if (!spkiOfKey.equals(spkiOfCert)) {
      throw new CaError(
        'NM_ERR_CA_KEY_MISMATCH',
        `ca: ${keyPath} is not the private key of ${certPath} (put back the matching pair${
          via === 'loadOrCreate' ? `, or remove both files to create a new root` : ''
        })`,
      );
    }

    // Non-extractable: once loaded, the key can sign but cannot be read back out of the process's CryptoKey.
    const signingKey = await webcrypto.subtle.importKey(
      'pkcs8',
      privateKey.export({ type: 'pkcs8', format: 'der' }),
      EC_KEY_ALG,
      false,
      ['sign'],
    );

    // Reuse the root's own SKI so AKI matches whatever method its issuer used to compute it.
    const ski = root.getExtension(x509.SubjectKeyIdentifierExtension);
    const aki = ski
      ? new x509.AuthorityKeyIdentifierExtension(ski.keyId, false)
      : await x509.AuthorityKeyIdentifierExtension.create(root.publicKey, false);

    return new CertificateAuthority({ trustDomain, root, rootNode, signingKey, aki });
  }

  /**
   * Signs a PKCS#10 CSR after checking its signature, its names against
   * `kind`, and `allowedUris`. Only the public key and the checked SANs are
   * taken from the CSR; the subject and every extension are decided here.
   */
  async signCsr(csrPem: string, opts: SignCsrOptions): Promise<IssuedCertificate> {
    if (typeof opts.kind !== 'function' && !(opts.kind in EKU_BY_KIND)) {
      throw new CaError('NM_ERR_CA_BAD_ARGUMENT', `ca: unknown certificate kind ${JSON.stringify(opts.kind)} (use workload, node, client or server)`);
    }
    if (typeof csrPem !== 'string' || csrPem.length > MAX_CSR_CHARS) {
      throw new CaError('NM_ERR_CA_BAD_CSR', `ca: the CSR must be a PEM string of at most ${MAX_CSR_CHARS} characters`);
    }

    let csr: x509.Pkcs10CertificateRequest;
    try {
      csr = new x509.Pkcs10CertificateRequest(csrPem);
    } catch (err) {
      throw new CaError('NM_ERR_CA_BAD_CSR', `ca: cannot parse the CSR: ${messageOf(err)} (send a PEM "CERTIFICATE REQUEST")`, { cause: err });
    }
    const keyAlg = csr.publicKey.algorithm as { name?: string; namedCurve?: string };
    if (keyAlg.name !== 'ECDSA' || keyAlg.namedCurve !== 'P-256') {
      throw new CaError('NM_ERR_CA_BAD_CSR', `ca: the CSR's key is ${keyAlg.name ?? '?'} ${keyAlg.namedCurve ?? ''}; nodemesh issues for ECDSA P-256 keys only`);
    }
    let signatureOk = false;
    try {
      signatureOk = await csr.verify();
    } catch {
      signatureOk = false;
    }
    if (!signatureOk) {
      throw new CaError('NM_ERR_CA_BAD_CSR', 'ca: the CSR signature does not verify (the request was altered, or signed with a key other than the one it carries)');
    }

    // URI-only kinds read their SANs alike, so a chooser sees the URI first.
    const sans = this.#sansFromCsr(csr, typeof opts.kind === 'function' ? 'workload' : opts.kind);
    const uris = sans.filter((s) => s.type === 'url').map((s) => s.value);
    const kind = typeof opts.kind === 'function' ? opts.kind(uris[0]!) : opts.kind;
    if (!(kind in EKU_BY_KIND) || (typeof opts.kind === 'function' && kind === 'server')) {
      throw new CaError('NM_ERR_CA_BAD_ARGUMENT', `ca: unknown certificate kind ${JSON.stringify(kind)} (use workload, node or client)`);
    }
    if (kind !== 'server') this.#checkIdentity(uris[0]!, kind);
    const lifetimeSeconds = typeof opts.lifetimeSeconds === 'function' ? opts.lifetimeSeconds(kind) : opts.lifetimeSeconds;
    this.#checkLifetime(lifetimeSeconds);
    const refusal = opts.allowedUris(uris);
    if (refusal !== null) throw new CaError('NM_ERR_CA_REFUSED', refusal);

    // The subject is left empty (the SAN, marked critical, is the identity): a CN
    // copied from the CSR would let a node put any text in a certificate the
    // mesh vouches for, where tools that still read CNs would take it as a name.
    return this.#issue({ publicKey: csr.publicKey, sans, lifetimeSeconds, kind });
  }

  /** A fresh key and serverAuth certificate for the controller's own TLS; each host becomes a DNS or IP SAN. */
  async issueServerCertificate(hosts: string[], lifetimeSeconds: number): Promise<{ keyPem: string } & IssuedCertificate> {
    this.#checkLifetime(lifetimeSeconds);
    if (!Array.isArray(hosts) || hosts.length === 0) {
      throw new CaError('NM_ERR_CA_BAD_ARGUMENT', 'ca: a server certificate needs at least one host name or IP address');
    }
    const sans: SanEntry[] = hosts.map((h) => {
      if (isIP(h) !== 0) return { type: 'ip', value: h };
      if (typeof h !== 'string' || !DNS_NAME_RE.test(h)) {
        throw new CaError('NM_ERR_CA_BAD_ARGUMENT', `ca: ${JSON.stringify(h)} is neither an IP address nor a DNS name`);
      }
      return { type: 'dns', value: h };
    });
    return this.#issueWithFreshKey(sans, lifetimeSeconds, 'server');
  }

  /** A fresh key and clientAuth certificate for one SPIFFE ID of this trust domain (e.g. spiffeAdminId). */
  async issueClientCertificate(uri: string, lifetimeSeconds: number): Promise<{ keyPem: string } & IssuedCertificate> {
    this.#checkLifetime(lifetimeSeconds);
    this.#checkIdentity(uri, 'client');
    return this.#issueWithFreshKey([{ type: 'url', value: uri }], lifetimeSeconds, 'client');
  }

  /**
   * Synchronous check of a peer's leaf against this root: signed by it,
   * within validity at `now`, not a CA. Returns the URI SANs for the caller's
   * authorization decision; throws NM_ERR_CA_UNTRUSTED otherwise.
   */
  verifyPeer(certDerOrPem: Buffer | string, now: Date = new Date()): { uris: string[]; notBefore: Date; notAfter: Date; serial: string } {
    let cert: NodeX509;
    try {
      cert = new NodeX509(certDerOrPem);
    } catch (err) {
      throw new CaError('NM_ERR_CA_UNTRUSTED', `ca: the peer certificate cannot be parsed: ${messageOf(err)}`, { cause: err });
    }
    const serial = normalizeSerial(cert.serialNumber);
    if (cert.raw.equals(this.#rootNode.raw)) {
      throw new CaError('NM_ERR_CA_UNTRUSTED', 'ca: the peer presented the root CA certificate itself, not a leaf issued by it');
    }
    if (!cert.checkIssued(this.#rootNode) || !cert.verify(this.#rootPublicKey)) {
      throw new CaError(
        'NM_ERR_CA_UNTRUSTED',
        `ca: certificate ${serial} (issuer "${cert.issuer}") was not signed by this mesh's root "${this.#rootNode.subject}"`,
      );
    }
    if (cert.ca) {
      throw new CaError('NM_ERR_CA_UNTRUSTED', `ca: certificate ${serial} is a CA certificate; peers must present a leaf`);
    }
    const notBefore = Date.parse(cert.validFrom);
    const notAfter = Date.parse(cert.validTo);
    const t = now.getTime();
    if (Number.isNaN(notBefore) || Number.isNaN(notAfter)) {
      throw new CaError('NM_ERR_CA_UNTRUSTED', `ca: certificate ${serial} has unreadable validity dates`);
    }
    if (t < notBefore) {
      throw new CaError('NM_ERR_CA_UNTRUSTED', `ca: certificate ${serial} is not valid before ${new Date(notBefore).toISOString()} (check the clocks)`);
    }
    if (t > notAfter) {
      throw new CaError('NM_ERR_CA_UNTRUSTED', `ca: certificate ${serial} expired at ${new Date(notAfter).toISOString()}`);
    }

    // node:crypto only offers SANs as an escaped display string; parse the extension properly instead.
    let uris: string[];
    try {
      const san = new x509.X509Certificate(cert.raw).getExtension(x509.SubjectAlternativeNameExtension);
      uris = san ? san.names.items.filter((n) => n.type === 'url').map((n) => n.value) : [];
    } catch (err) {
      throw new CaError('NM_ERR_CA_UNTRUSTED', `ca: certificate ${serial} has an unreadable subjectAltName: ${messageOf(err)}`, { cause: err });
    }
    return { uris, notBefore: new Date(notBefore), notAfter: new Date(notAfter), serial };
  }

  #checkLifetime(seconds: number): void {
    if (!lifetimeOk(seconds)) {
      throw new CaError('NM_ERR_CA_BAD_ARGUMENT', `ca: lifetimeSeconds must be a positive integer, got ${String(seconds)}`);
    }
  }

  /** workload/node/client certificates name exactly one SPIFFE ID of our trust domain, shaped for their kind. */
  #checkIdentity(uri: string, kind: Exclude<CertificateKind, 'server'>): void {
    const id = parseSpiffeId(uri);
    if (!id) {
      throw new CaError('NM_ERR_CA_REFUSED', `ca: ${JSON.stringify(uri)} is not a valid SPIFFE ID (expected spiffe://${this.trustDomain}/...)`);
    }
    if (id.trustDomain !== this.trustDomain) {
      throw new CaError('NM_ERR_CA_REFUSED', `ca: ${uri} is in trust domain ${id.trustDomain}, this CA signs only for ${this.trustDomain}`);
    }
    // The shape check keeps a workload certificate from ever carrying a node's or the admin's identity, whatever allowedUris says.
    if (kind === 'workload' && id.namespace === undefined) {
      throw new CaError('NM_ERR_CA_REFUSED', `ca: ${uri} is not a workload identity (expected spiffe://${this.trustDomain}/ns/NAMESPACE/sa/SERVICEACCOUNT)`);
    }
    if (kind === 'node' && !/^\/nodemesh\/node\/[^/]+$/.test(id.path)) {
      throw new CaError('NM_ERR_CA_REFUSED', `ca: ${uri} is not a node identity (expected spiffe://${this.trustDomain}/nodemesh/node/NAME)`);
    }
  }

  #sansFromCsr(csr: x509.Pkcs10CertificateRequest, kind: CertificateKind): SanEntry[] {
    let names: { type: string; value: string }[];
    try {
      // csr.extensions reads the PKCS#9 extensionRequest attribute.
      const sanExts = csr.extensions.filter((e) => e.type === SAN_OID);
      if (sanExts.length > 1) throw new CaError('NM_ERR_CA_BAD_CSR', 'ca: the CSR carries more than one subjectAltName extension (send one)');
      const san = sanExts[0];
      names = san instanceof x509.SubjectAlternativeNameExtension ? san.names.items.map((n) => ({ type: n.type, value: n.value })) : [];
    } catch (err) {
      if (err instanceof CaError) throw err;
      throw new CaError('NM_ERR_CA_BAD_CSR', `ca: cannot read the CSR's subjectAltName: ${messageOf(err)} (use URI, DNS or IP names only)`, { cause: err });
    }

    if (kind === 'server') {
      const bad = names.find((n) => n.type !== 'url' && n.type !== 'dns' && n.type !== 'ip');
      if (bad) throw new CaError('NM_ERR_CA_BAD_CSR', `ca: a server certificate may carry DNS, IP and URI names only; the CSR asks for ${bad.type}:${bad.value}`);
      if (names.length === 0) throw new CaError('NM_ERR_CA_BAD_CSR', 'ca: a server CSR needs at least one DNS, IP or URI subjectAltName');
      return names as SanEntry[];
    }
    // A CSR asking for more than we would issue is refused rather than silently trimmed: the requester would otherwise hold a certificate other than the one it asked for.
    const uris = names.filter((n) => n.type === 'url');
    const others = names.filter((n) => n.type !== 'url');
    if (others.length > 0) {
      throw new CaError(
        'NM_ERR_CA_BAD_CSR',
        `ca: a ${kind} certificate carries one URI SAN and nothing else; the CSR also asks for ${others.map((n) => `${n.type}:${n.value}`).join(', ')}`,
      );
    }
    if (uris.length !== 1) {
      throw new CaError('NM_ERR_CA_BAD_CSR', `ca: a ${kind} CSR must carry exactly one URI SAN (its SPIFFE ID); it carries ${uris.length}`);
    }
    return uris as SanEntry[];
  }

  async #issueWithFreshKey(sans: SanEntry[], lifetimeSeconds: number, kind: CertificateKind): Promise<{ keyPem: string } & IssuedCertificate> {
    const keys = (await webcrypto.subtle.generateKey(EC_KEY_ALG, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
    const issued = await this.#issue({ publicKey: keys.publicKey, sans, lifetimeSeconds, kind });
    const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
    return { keyPem: x509.PemConverter.encode(pkcs8, 'PRIVATE KEY') + '\n', ...issued };
  }

  async #issue(leaf: Leaf): Promise<IssuedCertificate> {
    const now = Date.now();
    if (now >= this.#rootNotAfterMs) {
      throw new CaError(
        'NM_ERR_CA_EXPIRED',
        `ca: the root expired at ${new Date(this.#rootNotAfterMs).toISOString()} (replace it with a new root and reissue every certificate)`,
      );
    }
    const notBefore = wholeSeconds(now - CLOCK_SKEW_MS);
    // A leaf outliving its root would be rejected by every verifier anyway; clamp so its notAfter tells the truth.
    const notAfter = wholeSeconds(Math.min(now + leaf.lifetimeSeconds * 1000, this.#rootNotAfterMs));
    const subjectEmpty = leaf.commonName === undefined || leaf.commonName === '';

    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: randomSerial(),
      ...(subjectEmpty ? {} : { subject: [{ CN: [leaf.commonName!] }] }),
      issuer: this.#root.subjectName,
      notBefore,
      notAfter,
      publicKey: leaf.publicKey,
      signingKey: this.#signingKey,
      signingAlgorithm: SIGNING_ALG,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
        new x509.ExtendedKeyUsageExtension(EKU_BY_KIND[leaf.kind], false),
        // RFC 5280 4.2.1.6: with an empty subject the SAN is the identity and must be critical.
        new x509.SubjectAlternativeNameExtension(leaf.sans, subjectEmpty),
        this.#aki,
      ],
    });
    const certPem = cert.toString('pem') + '\n';
    return {
      certPem,
      chainPem: certPem + this.rootPem,
      notBefore: cert.notBefore,
      notAfter: cert.notAfter,
      serial: normalizeSerial(cert.serialNumber),
      uris: leaf.sans.filter((s) => s.type === 'url').map((s) => s.value),
    };
  }
}
