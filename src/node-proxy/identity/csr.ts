/**
 * Key and CSR generation for the node proxy: the private key never leaves
 * the node; only the CSR goes to the controller's CA.
 */
// @peculiar/x509 resolves its algorithms through tsyringe, which refuses to
// load without a Reflect metadata polyfill: this import must come first.
import 'reflect-metadata';

import * as x509 from '@peculiar/x509';
import { webcrypto } from 'node:crypto';

import { MeshError } from '../../errors';

x509.cryptoProvider.set(webcrypto);

export class IdentityError extends MeshError {}

const EC_KEY_ALG = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGNING_ALG = { name: 'ECDSA', hash: 'SHA-256' } as const;

/**
 * A fresh ECDSA P-256 key and a CSR for it naming `uri` as its one URI SAN
 * (and `commonName` as subject CN when given). keyPem is PKCS#8 PEM.
 */
export async function generateKeyAndCsr(uri: string, commonName?: string): Promise<{ keyPem: string; csrPem: string }> {
  if (typeof uri !== 'string' || uri === '' || /\s/.test(uri) || !URL.canParse(uri)) {
    throw new IdentityError('NM_ERR_IDENTITY_BAD_URI', `identity: ${JSON.stringify(uri)} is not a URI (pass a SPIFFE ID such as spiffe://TD/ns/NS/sa/SA)`);
  }
  const keys = (await webcrypto.subtle.generateKey(EC_KEY_ALG, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const hasSubject = commonName !== undefined && commonName !== '';
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    ...(hasSubject ? { name: [{ CN: [commonName] }] } : {}),
    keys,
    signingAlgorithm: SIGNING_ALG,
    // Critical when the subject is empty, as the CA will mark it (RFC 5280 4.2.1.6).
    extensions: [new x509.SubjectAlternativeNameExtension([{ type: 'url', value: uri }], !hasSubject)],
  });
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
  return {
    keyPem: x509.PemConverter.encode(pkcs8, 'PRIVATE KEY') + '\n',
    csrPem: csr.toString('pem') + '\n',
  };
}
