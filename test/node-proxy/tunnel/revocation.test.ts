/**
 * The revocation list at both ends of a real HBONE tunnel (mutual TLS 1.3,
 * HTTP/2 CONNECT on loopback): the server refuses a client certificate on it,
 * the client refuses a server certificate on it, and tunnels set up before a
 * serial was listed are cut by recheck(); certificates not on it keep working
 * through the same server and pool.
 */
import 'reflect-metadata';

import { X509Certificate } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type * as stream from 'node:stream';

import { t, type Test } from 'tap';

import { CertificateAuthority, normalizeSerial, spiffeWorkloadId } from '../../../src/controller/ca';
import { generateKeyAndCsr } from '../../../src/node-proxy/identity';
import { HbonePool, HboneServer, TunnelError, type TunnelDial } from '../../../src/node-proxy/tunnel';
import { echoTarget } from '../../helpers/net';
import { waitFor } from '../../helpers/wait';

const TD = 'cluster.local';
const CLIENT_ID = spiffeWorkloadId(TD, 'default', 'client');
const SERVER_ID = spiffeWorkloadId(TD, 'backend', 'server');

interface Creds {
  certPem: string;
  keyPem: string;
  serial: string;
}

let ca: CertificateAuthority;

async function issue(uri: string): Promise<Creds> {
  const { keyPem, csrPem } = await generateKeyAndCsr(uri);
  const cert = await ca.signCsr(csrPem, { kind: 'workload', lifetimeSeconds: 3600, allowedUris: () => null });
  return { certPem: cert.chainPem, keyPem, serial: normalizeSerial(cert.serial) };
}

t.before(async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nodemesh-revoke-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  ca = await CertificateAuthority.loadOrCreate(dir, { trustDomain: TD });
});


/** One round trip through an open tunnel stream. */
function roundTrip(s: stream.Duplex, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    s.once('data', (d: Buffer) => resolve(d.toString()));
    s.once('error', reject);
    s.write(text);
  });
}

async function setup(t: Test): Promise<{ revoked: Set<string>; server: HboneServer; refused: string[]; dial: (creds: Creds, over?: Partial<TunnelDial>) => TunnelDial; pool: HbonePool; serverCreds: Creds }> {
  const serverCreds = await issue(SERVER_ID);
  const revoked = new Set<string>();
  const refused: string[] = [];
  const server = new HboneServer({
    trustBundle: () => ca.rootPem,
    revoked: (serial) => revoked.has(serial),
    serverCertificate: (id) => (id === SERVER_ID ? serverCreds : undefined),
    authorize: () => ({ accept: true }),
    onConnectionRefused: (e) => refused.push(e.reason),
  });
  const port = await server.listen(0, '127.0.0.1');
  t.teardown(() => server.close());
  const pool = new HbonePool();
  t.teardown(() => pool.close());
  const target = await echoTarget(t);
  const dial = (creds: Creds, over: Partial<TunnelDial> = {}): TunnelDial => ({
    sourceIdentity: CLIENT_ID,
    credentials: creds,
    trustBundle: ca.rootPem,
    node: { address: '127.0.0.1', port },
    destinationIdentity: SERVER_ID,
    target,
    timeoutMs: 5_000,
    revoked: (serial) => revoked.has(serial),
    ...over,
  });
  return { revoked, server, refused, dial, pool, serverCreds };
}

t.test('serials compare whatever their spelling', async (t) => {
  for (const [a, b] of [
    ['0A1B', 'a1b'],
    ['00ff', 'FF'],
    ['7f00', '7F00'],
    ['0', '0'],
  ] as const) t.equal(normalizeSerial(a), normalizeSerial(b), `${a} = ${b}`);
  const c = await issue(CLIENT_ID);
  t.equal(normalizeSerial(new X509Certificate(c.certPem).serialNumber), c.serial, "node:crypto's spelling meets the CA's");
});

t.test('the server refuses a client certificate on the list; others keep tunnelling', async (t) => {
  const { revoked, refused, dial, pool } = await setup(t);
  const good = await issue(CLIENT_ID);
  const bad = await issue(CLIENT_ID);
  revoked.add(bad.serial);
  const err = await pool.connect(dial(bad, { revoked: () => false })).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(err instanceof TunnelError, 'the revoked client got no tunnel');
  t.match(err, { code: 'NM_ERR_TUNNEL_TLS' });
  t.ok(await waitFor(() => refused.some((r) => r.includes(`revoked: the client certificate ${bad.serial} of ${CLIENT_ID} is on the revocation list`)), 5_000), 'the server says why');
  const s = await pool.connect(dial(good));
  t.equal(await roundTrip(s, 'still flowing'), 'still flowing', 'a certificate not on the list still tunnels through the same server');
  s.destroy();
});

t.test('recheck cuts a tunnel whose client certificate was listed after its handshake', async (t) => {
  const { revoked, server, dial, pool } = await setup(t);
  const a = await issue(CLIENT_ID);
  const b = await issue(CLIENT_ID);
  const sa = await pool.connect(dial(a));
  const sb = await pool.connect(dial(b));
  t.equal(await roundTrip(sa, 'a'), 'a');
  const aClosed = new Promise<void>((resolve) => sa.once('close', () => resolve()));
  revoked.add(a.serial);
  t.equal(server.recheck(), 1, 'one tunnel connection cut');
  await aClosed;
  t.equal(await roundTrip(sb, 'b'), 'b', 'the other client keeps its tunnel');
  await t.rejects(pool.connect(dial(a, { revoked: () => false })), { code: 'NM_ERR_TUNNEL_TLS' }, 'and the cut one cannot come back');
  sb.destroy();
});

t.test('the client refuses a server certificate on the list, and cuts sessions to it', async (t) => {
  const { revoked, dial, pool, serverCreds } = await setup(t);
  const c = await issue(CLIENT_ID);
  const s = await pool.connect(dial(c));
  t.equal(await roundTrip(s, 'x'), 'x');
  const closed = new Promise<unknown>((resolve) => s.once('error', resolve));
  revoked.add(serverCreds.serial);
  t.equal(pool.recheck((serial) => revoked.has(serial)), 1, 'the session to the revoked server is cut');
  t.match(await closed, { code: 'NM_ERR_TUNNEL_TLS', message: /was revoked/ });
  await t.rejects(pool.connect(dial(c)), { code: 'NM_ERR_TUNNEL_TLS', message: new RegExp(`presented certificate ${serverCreds.serial} for ${SERVER_ID.replace(/\//g, '\\/')}, which is revoked`) });
  // The same dial without the list (what the old code did) still gets through: the list is what refuses.
  const open = await pool.connect(dial(c, { revoked: () => false }));
  t.equal(await roundTrip(open, 'y'), 'y');
  open.destroy();
});
