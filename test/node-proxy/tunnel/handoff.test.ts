/**
 * An accepted CONNECT handed to a local handler instead of dialed (the hook
 * L7 at the destination will use), through a real HboneServer over real
 * mutual TLS 1.3 and HTTP/2 on loopback, with the real tunnel client: the
 * bytes reach the handler and its figures the 'closed' event; a failing
 * handler resets only its stream; the idle timeout still applies; a stream
 * reset before the decision never reaches the handler.
 */
import 'reflect-metadata';

import * as http2 from 'node:http2';
import type * as stream from 'node:stream';
import * as tls from 'node:tls';

import { t, type Test } from 'tap';

import { spiffeWorkloadId } from '../../../src/controller/ca';
import {
  HbonePool,
  HboneServer,
  identityToSni,
  type HboneServerOptions,
  type InboundDecision,
  type InboundRequest,
  type InboundStreamEvent,
  type StreamHandler,
  type TunnelDial,
} from '../../../src/node-proxy/tunnel';
import { unusedPort } from '../../helpers/net';
import { testCa, type TestCa, type WorkloadCreds } from '../../helpers/tunnel';
import { waitFor } from '../../helpers/wait';

const CLIENT_ID = spiffeWorkloadId('cluster.local', 'default', 'client');
const SERVER_ID = spiffeWorkloadId('cluster.local', 'backend', 'server');
const { NGHTTP2_CANCEL, NGHTTP2_INTERNAL_ERROR } = http2.constants;

let pki: TestCa;
let clientCreds: WorkloadCreds;
let serverCreds: WorkloadCreds;

t.before(async () => {
  pki = await testCa(t);
  [clientCreds, serverCreds] = await Promise.all([pki.issue(CLIENT_ID), pki.issue(SERVER_ID)]);
});

interface Harness {
  server: HboneServer;
  port: number;
  events: InboundStreamEvent[];
}

async function startServer(t: Test, over: Partial<HboneServerOptions>): Promise<Harness> {
  const events: InboundStreamEvent[] = [];
  const server = new HboneServer({
    trustBundle: () => pki.ca.rootPem,
    serverCertificate: (id) => (id === SERVER_ID ? serverCreds : undefined),
    authorize: () => ({ accept: true }),
    onStream: (e) => events.push(e),
    ...over,
  });
  const port = await server.listen(0, '127.0.0.1');
  t.teardown(() => server.close());
  return { server, port, events };
}

function newPool(t: Test): HbonePool {
  const pool = new HbonePool();
  t.teardown(() => pool.close());
  return pool;
}

function dialOf(port: number, target: { host: string; port: number }): TunnelDial {
  return {
    sourceIdentity: CLIENT_ID,
    credentials: clientCreds,
    trustBundle: pki.ca.rootPem,
    node: { address: '127.0.0.1', port },
    destinationIdentity: SERVER_ID,
    target,
    timeoutMs: 5_000,
  };
}

/** A CONNECT target nothing listens on: had the server dialed it, the CONNECT would have been a 502. */
async function nobody(): Promise<{ host: string; port: number }> {
  return { host: '127.0.0.1', port: await unusedPort() };
}

const closedOf = (events: InboundStreamEvent[]): InboundStreamEvent[] => events.filter((e) => e.phase === 'closed');

/** Each decided stream has exactly one 'closed' event. */
function oneClosedEach(t: Test, events: InboundStreamEvent[]): void {
  const decided = events.filter((e) => e.phase === 'decided').map((e) => e.req.streamId);
  t.same(closedOf(events).map((e) => e.req.streamId).sort(), decided.sort(), 'every decided stream closed exactly once');
}

interface Outcome {
  data: Buffer;
  ended: boolean;
  error?: Error;
  /** The HTTP/2 stream's RST_STREAM code (0: closed cleanly). */
  rstCode?: number;
  /** Closed before outcome() was called: data and error went by unseen. */
  already: boolean;
}

/**
 * How a client stream ends, within `timeoutMs` (undefined if it did not).
 * The stream may already be gone: the server's RST can arrive in the same
 * read as its 200.
 */
function outcome(st: stream.Duplex, timeoutMs = 10_000): Promise<Outcome | undefined> {
  const h2 = st as http2.ClientHttp2Stream;
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let ended = false;
    let error: Error | undefined;
    const timer = setTimeout(() => resolve(undefined), timeoutMs);
    const done = (already = false): void => {
      clearTimeout(timer);
      resolve({ data: Buffer.concat(chunks), ended, ...(error ? { error } : {}), rstCode: h2.rstCode, already });
    };
    if (h2.destroyed) {
      done(true);
      return;
    }
    st.on('data', (c: Buffer) => chunks.push(c));
    st.once('end', () => (ended = true));
    st.once('error', (e: Error) => (error = e));
    st.once('close', () => done());
  });
}

/** Echoes what the tunnel sends, uppercased, and half-closes after the client does; reports its own counts. */
const upperEcho: StreamHandler = (s, _req, finish) => {
  let bytesIn = 0;
  let bytesOut = 0;
  s.on('data', (c: Buffer) => {
    bytesIn += c.length;
    const up = Buffer.from(c.toString('latin1').toUpperCase(), 'latin1');
    bytesOut += up.length;
    s.write(up);
  });
  s.once('end', () => s.end());
  s.once('close', () => {
    finish('upper-echo: done', bytesIn, bytesOut);
    finish('upper-echo: a second finish', 1, 1); // ignored: the first one counts
  });
};

t.test("an accepted decision's handler takes the stream: its bytes, its figures, nothing dialed", async (t) => {
  const seen: InboundRequest[] = [];
  const h = await startServer(t, {
    authorize: () => ({
      accept: true,
      handle: (s, req, finish) => {
        seen.push(req);
        return upperEcho(s, req, finish);
      },
    }),
  });
  const pool = newPool(t);
  const target = await nobody();
  const text = 'hello, handler; '.repeat(8_000); // 128 KB: several DATA frames, so flow control is in play
  const st = await pool.connect(dialOf(h.port, target));
  st.end(text);
  const got = await outcome(st);
  t.ok(got, 'the stream ended');
  t.equal(got?.data.toString('latin1'), text.toUpperCase(), 'the client read back what the handler wrote');
  t.ok(got?.ended, 'and END_STREAM after it');
  t.equal(got?.rstCode, 0, 'no reset');
  t.notOk(got?.error, 'no stream error');
  t.same(seen.map((r) => r.target), [target], 'the handler got the request, target as sent');
  t.equal(seen[0]?.peer.principal, CLIENT_ID);

  t.ok(await waitFor(() => closedOf(h.events).length === 1), 'the server reported the stream closed');
  await new Promise((r) => setTimeout(r, 50)); // room for a wrongly emitted second 'closed'
  t.same(h.events.map((e) => e.phase), ['decided', 'closed'], "one 'decided', one 'closed': the second finish() was ignored");
  t.match(closedOf(h.events)[0], { decision: { accept: true }, closeReason: 'upper-echo: done', bytesIn: text.length, bytesOut: text.length });
  t.equal(h.server.load.streams, 0, 'the stream is no longer counted open');
});

t.test('a handler that throws resets its stream, is reported, and the server keeps serving', async (t) => {
  let handler: StreamHandler = () => {
    throw new Error('l7: cannot parse the request');
  };
  const h = await startServer(t, { authorize: () => ({ accept: true, handle: (s, req, finish) => handler(s, req, finish) }) });
  const pool = newPool(t);
  const target = await nobody();

  const failedOnce = async (t: Test, why: RegExp): Promise<void> => {
    const before = closedOf(h.events).length;
    const st = await pool.connect(dialOf(h.port, target));
    const got = await outcome(st);
    t.ok(got, 'the stream ended, it was not left hanging');
    t.equal(got?.rstCode, NGHTTP2_INTERNAL_ERROR, 'reset with INTERNAL_ERROR');
    if (got?.error || !got?.already) t.match(got?.error, { code: 'ERR_HTTP2_STREAM_ERROR', message: /NGHTTP2_INTERNAL_ERROR/ }, 'which the client sees as a stream error');
    t.ok(await waitFor(() => closedOf(h.events).length === before + 1));
    t.match(closedOf(h.events).at(-1), { decision: { accept: true }, closeReason: why, bytesIn: 0, bytesOut: 0 });
  };

  await t.test('thrown synchronously', (t) => failedOnce(t, /^handler-failed: l7: cannot parse the request$/));

  await t.test('rejected asynchronously (no unhandled rejection)', async (t) => {
    handler = async () => {
      await new Promise((r) => setImmediate(r));
      throw new Error('l7: upstream pick failed');
    };
    await failedOnce(t, /^handler-failed: l7: upstream pick failed$/);
  });

  await t.test('the next stream, on the same tunnel connection, is served', async (t) => {
    handler = upperEcho;
    const st = await pool.connect(dialOf(h.port, target));
    st.end('still here');
    t.equal((await outcome(st))?.data.toString(), 'STILL HERE');
    t.equal(pool.stats().sessions, 1, 'the resets did not cost the tunnel connection');
  });

  t.ok(await waitFor(() => closedOf(h.events).length === 3));
  oneClosedEach(t, h.events);
});

t.test("the idle timeout cuts a handler's quiet stream, not a busy one", async (t) => {
  const idleTimeoutMs = 1_000;
  const handlerSaw: number[] = [];
  const h = await startServer(t, {
    idleTimeoutMs,
    authorize: () => ({
      accept: true,
      handle: (s, _req, finish) => {
        let bytesIn = 0;
        s.on('data', (c: Buffer) => (bytesIn += c.length));
        s.once('close', () => {
          handlerSaw.push(s.rstCode ?? -1);
          finish('handler: stream closed', bytesIn, 0);
        });
      },
    }),
  });
  const pool = newPool(t);
  const st = await pool.connect(dialOf(h.port, await nobody()));
  const ended = outcome(st);
  // Bytes well inside the timeout, for longer than the timeout: the stream must stay.
  for (let i = 0; i < 8; i++) {
    st.write('x');
    await new Promise((r) => setTimeout(r, idleTimeoutMs / 7));
  }
  t.notOk(st.destroyed, 'a stream with bytes flowing is not idle');
  t.same(handlerSaw, [], 'and its handler still has it');

  const got = await ended;
  t.ok(got, 'then, quiet, it was cut');
  t.equal(got?.rstCode, NGHTTP2_CANCEL, 'with CANCEL, as a dialed stream is');
  t.ok(await waitFor(() => handlerSaw.length === 1), 'the handler saw its stream close');
  t.same(handlerSaw, [NGHTTP2_CANCEL]);
  t.ok(await waitFor(() => closedOf(h.events).length === 1));
  t.match(closedOf(h.events)[0], { closeReason: 'idle-timeout', bytesIn: 8, bytesOut: 0 }, "the server's reason, the handler's counts");
});

t.test('a handler that never calls finish() still gets its stream reported closed', async (t) => {
  const h = await startServer(t, { idleTimeoutMs: 300, authorize: () => ({ accept: true, handle: (s) => void s.resume() }) });
  const pool = newPool(t);
  const st = await pool.connect(dialOf(h.port, await nobody()));
  st.destroy();
  t.ok(await waitFor(() => closedOf(h.events).length === 1, 10_000), "a 'closed' event came anyway");
  t.match(closedOf(h.events)[0], { closeReason: /^handler-unfinished: finish\(\) not called within 300 ms/, bytesIn: 0, bytesOut: 0 });
  oneClosedEach(t, h.events);
});

t.test('a stream reset before the decision never reaches the handler', async (t) => {
  let release: ((d: InboundDecision) => void) | undefined;
  let handled = 0;
  const h = await startServer(t, {
    authorize: () =>
      new Promise<InboundDecision>((resolve) => {
        release = resolve;
      }),
  });
  const options: tls.ConnectionOptions = {
    host: '127.0.0.1',
    port: h.port,
    servername: identityToSni(SERVER_ID),
    ca: pki.ca.rootPem,
    cert: clientCreds.certPem,
    key: clientCreds.keyPem,
    ALPNProtocols: ['h2'],
    checkServerIdentity: () => undefined,
  };
  // A bare HTTP/2 client: the tunnel pool cannot reset a CONNECT at a moment of the test's choosing.
  const session = http2.connect(`https://127.0.0.1:${h.port}`, { createConnection: () => tls.connect(options) });
  t.teardown(() => session.destroy());
  session.on('error', () => {});
  const target = await nobody();
  const req = session.request({ ':method': 'CONNECT', ':authority': `${target.host}:${target.port}` }, { endStream: false });
  req.on('error', () => {});
  t.ok(await waitFor(() => release !== undefined), 'authorize was asked');
  req.close(NGHTTP2_CANCEL);
  t.ok(await waitFor(() => h.server.load.streams === 0), 'the server saw the reset');
  release!({
    accept: true,
    handle: () => {
      handled++;
    },
  });
  t.ok(await waitFor(() => closedOf(h.events).length === 1));
  t.equal(handled, 0, 'the handler was never called');
  t.match(h.events, [
    { phase: 'decided', decision: { accept: true } },
    { phase: 'closed', closeReason: 'reset before connect', bytesIn: 0, bytesOut: 0 },
  ]);
  t.equal(h.events.length, 2);
});
