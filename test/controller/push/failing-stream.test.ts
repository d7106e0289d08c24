/**
 * Node config streams that keep failing, against a real controller over
 * TLS on loopback: the controller counts every end once with the code it
 * ended with, ListNodes and `nodemesh status` show the node's last error,
 * the node keeps its own and backs off instead of hammering.
 */
import { Writable } from 'node:stream';

import pino from 'pino';
import { t, type Test } from 'tap';

import { main } from '../../../src/cli/main';
import type { ControllerClient } from '../../../src/controller/client';
import { ConfigStream, describeLink, type ApplyResult } from '../../../src/node-proxy/state';
import { doc, httpGet, sample, testController, type TestController } from '../../helpers/controller';
import { waitFor } from '../../helpers/wait';

const A = 'nodemesh.io/v1alpha1';
const wl = (name: string, node: string) => ({ apiVersion: A, kind: 'Workload', metadata: { name, namespace: 'shop', labels: { app: name } }, spec: { node, serviceAccount: name, addresses: [`198.18.1.${name.length}`] } });

/** How long a failing node is left to retry; with the back-off it makes at most 7 attempts in it (delays from 100, 200, 400 … ms). */
const WINDOW_MS = 5000;
const MAX_ATTEMPTS = 8;

function captured(): { log: pino.Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return { log: pino({ level: 'debug' }, sink), lines };
}

async function metrics(c: TestController): Promise<string> {
  return (await httpGet(c.controller.metricsPort, '/metrics')).body;
}

async function cli(c: TestController, args: string[]): Promise<string> {
  let out = '';
  const code = await main([...args, '--credentials', c.controller.credentialsPath], { out: (s) => void (out += s), err: (s) => void (out += s) });
  if (code !== 0) throw new Error(`nodemesh ${args.join(' ')} exited ${code}: ${out}`);
  return out;
}

/** The sum of every sample of `name` whose labels include `labels`. */
function total(text: string, name: string, labels: Record<string, string>): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)\{([^}]*)\} (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = Object.fromEntries([...m[2]!.matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) sum += Number(m[3]);
  }
  return sum;
}

const node = async (c: TestController, name: string) => (await c.admin.listNodes()).find((n) => n.node === name);

/** Leaves `s` failing for the window, stops it, and waits until the controller has counted the end of every stream it saw. */
async function failFor(t: Test, c: TestController, s: ConfigStream, name: string, endLabels: Record<string, string>): Promise<number> {
  s.start();
  t.teardown(() => s.stop());
  await new Promise((r) => setTimeout(r, WINDOW_MS));
  s.stop();
  let opened = 0;
  const counted = await waitFor(async () => {
    opened = (await node(c, name))?.streamsOpened ?? 0;
    return opened > 0 && sample(await metrics(c), 'nodemesh_controller_node_stream_ends_total', endLabels) === opened;
  }, 5000);
  t.ok(counted, `each of the ${opened} streams is counted as ended with ${JSON.stringify(endLabels)}`);
  t.ok(opened >= 2 && opened <= MAX_ATTEMPTS, `${opened} attempts in ${WINDOW_MS / 1000} s: it backs off (at most ${MAX_ATTEMPTS}), yet keeps trying`);
  return opened;
}

t.test('a node whose hello names another node: refused each time, shown with why, few attempts', async (t) => {
  const c = await testController(t);
  await c.admin.apply([doc(wl('web', 'n1'))]);
  const { log, lines } = captured();
  const s = new ConfigStream({ client: await c.nodeClient('n1'), node: 'n9', log });
  const started = Date.now();
  const opened = await failFor(t, c, s, 'n1', { code: 'PERMISSION_DENIED', reason: 'bad-hello' });

  const m = await metrics(c);
  t.equal(sample(m, 'nodemesh_controller_api_requests_total', { method: 'NodeConfig.Stream', code: 'PERMISSION_DENIED' }), opened, 'the calls are counted with their real code');
  t.equal(sample(m, 'nodemesh_controller_api_requests_total', { method: 'NodeConfig.Stream', code: 'OK' }), 0, 'and none as OK');

  const n = (await node(c, 'n1'))!;
  t.match(n, { connected: false, ackedVersion: 0, lastError: 'PERMISSION_DENIED: hello names node n9, but the certificate is node n1' }, 'ListNodes shows the node and why');
  t.ok(n.lastErrorUnixMs >= started && n.lastErrorUnixMs <= Date.now(), 'with when');

  const link = s.link;
  t.ok(link.failures >= opened - 1 && link.failures <= opened, `the node counted ${link.failures} failures in a row`);
  t.match(link.lastError, /^7 PERMISSION_DENIED: hello names node n9, but the certificate is node n1$/);
  t.match(describeLink({ ...link, retryAtUnixMs: 0 }, s.state.version), /^not connected \(\d+ attempts failed, last error \d+ (ms|s) ago: 7 PERMISSION_DENIED: hello names node n9, but the certificate is node n1\), holds version 0: no config yet$/);
  const warned = lines.filter((l) => l.msg === 'config stream broke; keeping the last config');
  t.equal(warned.length, 1, `one warning for ${opened} failures (the next comes 30 s later, with the count held back)`);
  t.equal(lines.filter((l) => l.msg === 'config stream broke again').length, link.failures - 1, 'the rest at debug');

  const status = await cli(c, ['status']);
  t.match(status, /: 0 of 1 nodes connected, 1 holds no config \(store version \d+\)/);
  t.match(status, /^n1 +NO +- +0 +0 +- +NONE +\d+ +never +\d+ (ms|s) ago: PERMISSION_DENIED: hello names node n9, but the certificate is node n1$/m, `nodemesh status shows it:\n${status}`);
  const list = await cli(c, ['node', 'list']);
  t.match(list, /^n1 +active +no +NONE .* PERMISSION_DENIED: hello names node n9/m, `nodemesh node list too:\n${list}`);
});

t.test('an item over the receive limit a node states: the controller says which, and the node backs off', async (t) => {
  const c = await testController(t);
  await c.admin.apply([doc(wl('web', 'n1')), doc(wl('api', 'n2'), 2)]);
  const s = new ConfigStream({ client: await c.nodeClient('n1', { maxResponseBytes: 1024 }), node: 'n1' });
  const opened = await failFor(t, c, s, 'n1', { code: 'RESOURCE_EXHAUSTED', reason: 'too-large' });
  const m = await metrics(c);
  t.equal(sample(m, 'nodemesh_controller_api_requests_total', { method: 'NodeConfig.Stream', code: 'RESOURCE_EXHAUSTED' }), opened);
  t.equal(sample(m, 'nodemesh_controller_api_requests_total', { method: 'NodeConfig.Stream', code: 'OK' }), 0, 'none counted as OK');
  t.match(s.link.lastError, /^8 RESOURCE_EXHAUSTED: \S+ is \d+ bytes on the wire, more than node n1 takes in one message/, 'the node kept the error');
  t.equal(s.state.version, 0, 'and holds nothing');
  t.match((await node(c, 'n1'))!, { connected: false, ackedVersion: 0, lastError: /^RESOURCE_EXHAUSTED: \S+ is \d+ bytes on the wire, more than node n1 takes/ });
  const status = await cli(c, ['status']);
  t.match(status, /^n1 +NO +- +\d+ +0 +- +NONE +\d+ .* ago: RESOURCE_EXHAUSTED: \S+ is \d+ bytes on the wire/m, `nodemesh status shows it:\n${status}`);
});

/** One stream as a node that does not state its receive limit opens it: resolves with how the node saw it end. */
function attempt(client: ControllerClient, lastError: string): Promise<string> {
  const call = client.configStream();
  return new Promise((resolve) => {
    call.on('data', () => {});
    call.on('error', (err: Error) => resolve(err.message));
    call.on('end', () => resolve('ended'));
    call.write({ hello: { node: 'n1', version: 0, proxyVersion: 'old', addresses: [], maxMessageBytes: 0, lastError } });
  });
}

t.test('a node that refuses a message itself says why in its next hello: the controller saw only a cancel', async (t) => {
  const c = await testController(t);
  await c.admin.apply([doc(wl('web', 'n1')), doc(wl('api', 'n2'), 2)]);
  // Its hello says no limit (0: gRPC's default, 4 MiB), so parts are cut for that; its client takes 1 KiB.
  const client = await c.nodeClient('n1', { maxResponseBytes: 1024 });
  const first = await attempt(client, '');
  t.match(first, /^8 RESOURCE_EXHAUSTED: Received message larger than max \(\d+ vs\.? 1024\)$/, 'the node refused the snapshot');
  t.ok(await waitFor(async () => sample(await metrics(c), 'nodemesh_controller_node_stream_ends_total', { code: 'CANCELLED', reason: 'node-cancelled' }) === 1), 'the controller counted a cancel');
  const cancelledAt = Date.now();
  t.equal((await node(c, 'n1'))!.lastError, '', 'a cancel alone is no error: nodes cancel on purpose too');
  const second = await attempt(client, first);
  t.equal(second, first, 'the next attempt fails the same way');
  const n = (await node(c, 'n1'))!;
  t.match(n, { connected: false, ackedVersion: 0, streamsOpened: 2, lastError: /^node: 8 RESOURCE_EXHAUSTED: Received message larger than max/ }, 'ListNodes shows what the node reported');
  t.ok(n.lastErrorUnixMs > 0 && n.lastErrorUnixMs <= cancelledAt, 'at the time its first stream ended');
  const m = await metrics(c);
  t.equal(sample(m, 'nodemesh_controller_api_requests_total', { method: 'NodeConfig.Stream', code: 'CANCELLED' }), 2);
  t.equal(sample(m, 'nodemesh_controller_api_requests_total', { method: 'NodeConfig.Stream', code: 'OK' }), 0, 'none counted as OK');
  const status = await cli(c, ['status']);
  t.match(status, /^n1 +NO +- +\d+ +0 +- +NONE +2 .* ago: node: 8 RESOURCE_EXHAUSTED: Received message larger than max/m, `nodemesh status shows it:\n${status}`);
});

t.test('a working stream is counted once, when it ends, by how it ended', async (t) => {
  const c = await testController(t);
  await c.admin.apply([doc(wl('web', 'n1'))]);
  const client = await c.nodeClient('n1');
  const { log, lines } = captured();
  const s = new ConfigStream({ client, node: 'n1', log });
  const u: ApplyResult[] = [];
  s.on('update', (r) => u.push(r));
  s.start();
  t.teardown(() => s.stop());
  t.ok(await waitFor(() => u.length === 1), 'it got its config');
  const ends = (m: string, labels: Record<string, string>) => total(m, 'nodemesh_controller_node_stream_ends_total', labels);
  const calls = (m: string, code: string) => total(m, 'nodemesh_controller_api_requests_total', { method: 'NodeConfig.Stream', code });
  t.equal(calls(await metrics(c), 'OK'), 0, 'an open stream is not counted yet');
  t.match(describeLink(s.link, s.state.version), /^connected, holds version \d+$/);

  // Another stream of the same node takes over: the first ends OK, as replaced; the node reconnects and takes over in turn.
  const raw = client.configStream();
  t.teardown(() => raw.cancel());
  raw.on('error', () => {});
  raw.on('data', () => {});
  raw.write({ hello: { node: 'n1', version: 0, proxyVersion: 'test', addresses: [] } });
  t.ok(await waitFor(async () => ends(await metrics(c), { code: 'OK', reason: 'replaced' }) >= 2, 5000), 'each replaced stream ends OK, reason replaced');
  t.ok(await waitFor(() => u.length >= 2 && s.connected, 5000), 'the node is back');

  // Revoked: PERMISSION_DENIED on both sides, and both keep the reason.
  await c.admin.revokeNode('n1');
  t.ok(
    await waitFor(() => lines.some((l) => l.msg === 'config stream broke; keeping the last config' && /^7 PERMISSION_DENIED: node n1 was revoked/.test(String(l.reason)))),
    'the node heard why, and warned at once (its last stream had delivered)',
  );
  const m = await metrics(c);
  t.equal(ends(m, { code: 'PERMISSION_DENIED', reason: 'revoked' }), 1);
  t.equal(calls(m, 'OK'), ends(m, { code: 'OK' }), 'OK is counted only for the streams that ended cleanly');
  t.equal(calls(m, 'PERMISSION_DENIED'), ends(m, { code: 'PERMISSION_DENIED' }), 'every end counted once under its code');
  t.match((await node(c, 'n1'))!, { connected: false, revoked: true, lastError: /^PERMISSION_DENIED: node n1 was revoked/ });
  s.stop();
});

t.test('a stopping controller ends streams as UNAVAILABLE; the node says so and serves what it holds', async (t) => {
  const c = await testController(t);
  await c.admin.apply([doc(wl('web', 'n1'))]);
  const { log, lines } = captured();
  const s = new ConfigStream({ client: await c.nodeClient('n1'), node: 'n1', log });
  const u: ApplyResult[] = [];
  s.on('update', (r) => u.push(r));
  s.start();
  t.teardown(() => s.stop());
  t.ok(await waitFor(() => u.length === 1), 'it got its config');
  const held = s.state.version;
  await c.stop();
  t.ok(
    await waitFor(() => lines.some((l) => l.msg === 'config stream broke; keeping the last config' && l.reason === '14 UNAVAILABLE: controller shutting down')),
    'the node heard why its stream ended',
  );
  t.ok(await waitFor(() => s.link.failures >= 2, 5000), 'and keeps trying');
  t.match(describeLink(s.link, s.state.version), new RegExp(`^not connected \\(\\d+ attempts failed, last error \\d+ (ms|s) ago: 14 UNAVAILABLE: .*\\), holds version ${held}: serving it until the controller is back`));
  t.equal(s.state.version, held, 'holding the config it had');
});
