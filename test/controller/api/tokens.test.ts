/**
 * Bootstrap tokens over real TLS/gRPC: single use by default, a stated number
 * of uses otherwise, expiring, hashed at rest, taken atomically (concurrent
 * joins, a kill -9), and old stores upgraded.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

import Database from 'better-sqlite3';
import { t } from 'tap';

import { spiffeNodeId } from '../../../src/controller/ca';
import { ControllerClient, loadCredentials } from '../../../src/controller/client';
import { generateKeyAndCsr } from '../../../src/node-proxy/identity';
import { controllerProcess, refused, tempDir, testController } from '../../helpers/controller';

/** A join as a fresh node would do it: its own channel, no client certificate, a new key. */
async function join(address: string, ca: string, token: string, node: string): Promise<{ certificateChainPem: string }> {
  const anon = new ControllerClient({ address, ca });
  try {
    const { csrPem } = await generateKeyAndCsr(spiffeNodeId('cluster.local', node));
    return await anon.join(token, node, csrPem);
  } finally {
    anon.close();
  }
}

t.test('a used token cannot join again; a 2-use token joins twice, not a third time', async (t) => {
  const c = await testController(t);
  const { ca } = loadCredentials(c.controller.credentialsPath);
  const once = await c.admin.createToken('n1');
  t.equal(once.uses, 1, 'single use unless told otherwise');
  t.ok(Math.abs(once.expiresUnixMs - Date.now() - 24 * 3600 * 1000) < 60_000, 'valid 24 h unless told otherwise');
  t.match((await join(c.address, ca, once.token, 'n1')).certificateChainPem, /BEGIN CERTIFICATE/);
  const again = await refused(join(c.address, ca, once.token, 'n1'));
  t.equal(again.code, 'NM_ERR_GRPC_UNAUTHENTICATED');
  t.match(again.message, /bootstrap token [0-9a-f]{8} was already used \(1 of 1 join\): create one with `nodemesh controller token create --node n1`/);

  const twice = await c.admin.createToken('n2', 0, 2);
  const a = await join(c.address, ca, twice.token, 'n2');
  const b = await join(c.address, ca, twice.token, 'n2');
  t.not(a.certificateChainPem, b.certificateChainPem, 'two joins, two certificates');
  t.match(await refused(join(c.address, ca, twice.token, 'n2')), { code: 'NM_ERR_GRPC_UNAUTHENTICATED', message: /already used \(2 of 2 joins\)/ });

  // A token for no node in particular joins new names only: it cannot take over a node that joined.
  const pool = await c.admin.createToken('', 0, 3);
  await join(c.address, ca, pool.token, 'n5');
  t.match(await refused(join(c.address, ca, pool.token, 'n1')), { code: 'NM_ERR_GRPC_PERMISSION_DENIED', message: /node n1 joined before: a token for any node cannot join it again/ });
  t.match(await refused(join(c.address, ca, pool.token, 'n5')), { message: /node n5 joined before/ });
  await join(c.address, ca, pool.token, 'n6');

  t.match(await refused(c.admin.createToken('n1', 8 * 24 * 3600)), { code: 'NM_ERR_GRPC_INVALID_ARGUMENT', message: /TTL may be at most 168 h/ });
  t.match(await refused(c.admin.createToken('n1', 0, 5000)), { code: 'NM_ERR_GRPC_INVALID_ARGUMENT', message: /at most 1000 joins/ });
  t.ok(c.logs.some((l) => l.event === 'security' && /already used/.test(String(l.reason))), 'a refused join is a security event in the log');
  // The controller kept serving through all of it.
  t.same((await c.admin.list('workloads')).items, []);
});

t.test('an expired token is refused', async (t) => {
  const c = await testController(t);
  const { ca } = loadCredentials(c.controller.credentialsPath);
  const { token } = await c.admin.createToken('n1', 1);
  await new Promise((r) => setTimeout(r, 1500));
  const e = await refused(join(c.address, ca, token, 'n1'));
  t.equal(e.code, 'NM_ERR_GRPC_UNAUTHENTICATED');
  t.match(e.message, /bootstrap token [0-9a-f]{8} expired at \d{4}-\d\d-\d\dT[\d:.]+Z: create one with/);
  const fresh = await c.admin.createToken('n1', 60);
  t.match((await join(c.address, ca, fresh.token, 'n1')).certificateChainPem, /BEGIN CERTIFICATE/, 'a fresh one still joins');
});

t.test('concurrent joins with a single-use token: exactly one certificate', async (t) => {
  const c = await testController(t);
  const { ca } = loadCredentials(c.controller.credentialsPath);
  const { token } = await c.admin.createToken('n1');
  const results = await Promise.allSettled(Array.from({ length: 8 }, () => join(c.address, ca, token, 'n1')));
  const won = results.filter((r) => r.status === 'fulfilled');
  const lost = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  t.equal(won.length, 1, 'one join got a certificate');
  t.equal(lost.length, 7);
  for (const r of lost) t.match(r.reason, { code: 'NM_ERR_GRPC_UNAUTHENTICATED', message: /already used \(1 of 1 join\)/ });
  const nodeCerts = c.controller.store.liveCertificates(Date.now()).filter((x) => x.kind === 'node' && x.node === 'n1');
  t.equal(nodeCerts.length, 1, 'the controller recorded one node certificate');
  const [n1] = await c.admin.listNodes();
  t.match(n1, { node: 'n1', revoked: false, certificateSerial: nodeCerts[0]!.serial });
});

t.test('tokens are stored hashed: a copy of the database gives no usable token', async (t) => {
  const c = await testController(t);
  const { ca } = loadCredentials(c.controller.credentialsPath);
  const { token } = await c.admin.createToken('n1');
  const [id, secret] = token.split('.') as [string, string];
  const db = new Database(c.controller.store.path, { readonly: true });
  t.teardown(() => db.close());
  const row = db.prepare('SELECT * FROM tokens WHERE id = ?').get(id) as Record<string, unknown>;
  t.equal(row.secret_hash, createHash('sha256').update(secret).digest('hex'));
  t.notOk(JSON.stringify(db.prepare('SELECT * FROM tokens').all()).includes(secret), 'the secret is in no column');
  for (const f of fs.readdirSync(path.dirname(c.controller.store.path)).filter((x) => x.startsWith('store.db'))) {
    t.notOk(fs.readFileSync(path.join(path.dirname(c.controller.store.path), f)).includes(Buffer.from(secret)), `the secret is in no byte of ${f}`);
  }
  t.match(await refused(join(c.address, ca, `${id}.${String(row.secret_hash)}`, 'n1')), { code: 'NM_ERR_GRPC_UNAUTHENTICATED', message: /unknown bootstrap token/ });
  t.match((await join(c.address, ca, token, 'n1')).certificateChainPem, /BEGIN CERTIFICATE/, 'the real token still joins');
});

t.test('kill -9 right after a join does not bring the used token back', async (t) => {
  const dataDir = tempDir(t, 'nodemesh-token-crash-');
  let child = await controllerProcess(dataDir);
  t.teardown(() => child.kill('SIGKILL'));
  const credsFile = path.join(dataDir, 'admin.json');
  let admin = ControllerClient.fromCredentials(credsFile);
  const { token } = await admin.createToken('n1');
  const { ca, controller } = loadCredentials(credsFile);
  await join(controller, ca, token, 'n1');
  admin.close();
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  child = await controllerProcess(dataDir);
  const after = loadCredentials(credsFile);
  t.match(await refused(join(after.controller, after.ca, token, 'n1')), { code: 'NM_ERR_GRPC_UNAUTHENTICATED', message: /already used/ });
  admin = ControllerClient.fromCredentials(credsFile);
  t.teardown(() => admin.close());
  t.match(await admin.listNodes(), [{ node: 'n1', revoked: false }], 'the node it made is still known');
});

t.test('a store made before tokens were single use is upgraded in place', async (t) => {
  const dataDir = tempDir(t, 'nodemesh-token-migrate-');
  // The tables as the previous release wrote them, with one of its (reusable) tokens.
  const old = new Database(path.join(dataDir, 'store.db'));
  old.exec(`
CREATE TABLE objects (kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (kind, namespace, name)) WITHOUT ROWID;
CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, version INTEGER NOT NULL, type TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX events_version ON events (version);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE tokens (id TEXT PRIMARY KEY, node TEXT NOT NULL, secret_hash TEXT NOT NULL, expires_at INTEGER NOT NULL, created_at INTEGER NOT NULL) WITHOUT ROWID;
`);
  old.prepare('INSERT INTO tokens VALUES (?, ?, ?, ?, ?)').run('0ld70ken', 'n1', createHash('sha256').update('s3cret').digest('hex'), Date.now() + 3600_000, Date.now());
  old.prepare("INSERT INTO meta VALUES ('version', '0')").run();
  old.close();

  const c = await testController(t, dataDir);
  const { ca } = loadCredentials(c.controller.credentialsPath);
  await join(c.address, ca, '0ld70ken.s3cret', 'n1');
  t.match(await refused(join(c.address, ca, '0ld70ken.s3cret', 'n1')), { message: /was already used \(1 of 1 join\)/ }, 'the old token became single use');
  const db = new Database(c.controller.store.path, { readonly: true });
  t.teardown(() => db.close());
  t.equal(db.pragma('user_version', { simple: true }), 2, 'the schema version is recorded');
});
