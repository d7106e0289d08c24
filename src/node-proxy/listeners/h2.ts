/**
 * HTTP/2 sessions a listener serves, bounded: the options node:http2 has a
 * knob for (header list, SETTINGS entries, outstanding PINGs, invalid frames,
 * refused streams, nghttp2's own reset bucket), and per-second counters for
 * what it has none for: streams reset before they were answered (the
 * CVE-2023-44487 rapid reset, and the MadeYouReset variant where the server
 * resets them), PING and SETTINGS floods. Over a bound the session gets
 * GOAWAY ENHANCE_YOUR_CALM and its socket is destroyed a grace later. A
 * session nghttp2 gave up on by itself can stop reading without closing
 * (Node 20 left one open for over ten minutes after its own reset GOAWAY), so
 * a keepalive PING that goes unanswered destroys such a session too.
 */
import * as http2 from 'node:http2';

import { RateBudget } from '../../net';
import type { ListenerGuard } from './guard';
import type { H2Limits } from './limits';

const { NGHTTP2_ENHANCE_YOUR_CALM, NGHTTP2_NO_ERROR } = http2.constants;

/** A stream reset within this of opening counts as premature, answered or not (Envoy's premature_reset_min_stream_lifetime). */
const PREMATURE_MS = 1_000;

/**
 * A header list's size as SETTINGS_MAX_HEADER_LIST_SIZE counts it (RFC 9113
 * §6.5.2: name and value octets plus 32 per field). node advertises the
 * setting but enforces only its own 64 KiB, so the server checks this.
 */
export function headerListSize(rawHeaders: readonly string[]): number {
  let n = 0;
  for (const h of rawHeaders) n += Buffer.byteLength(h);
  return n + 16 * rawHeaders.length;
}

/** Options for http2.performServerHandshake / createSecureServer from the limits. */
export function h2SessionOptions(l: H2Limits, extra: http2.Settings = {}): http2.ServerSessionOptions {
  return {
    settings: { ...extra, maxConcurrentStreams: l.maxConcurrentStreams, maxHeaderListSize: l.maxHeaderListSize, enablePush: false },
    maxHeaderListPairs: l.maxHeaderListPairs,
    maxSettings: l.maxSettings,
    maxOutstandingPings: l.maxOutstandingPings,
    maxSessionInvalidFrames: l.maxSessionInvalidFrames,
    maxSessionRejectedStreams: l.maxSessionRejectedStreams,
    // nghttp2's own bucket stays as a backstop above ours; node >= 20.12 passes these through.
    ...({ streamResetBurst: 4 * l.maxResetsPerSecond, streamResetRate: l.maxResetsPerSecond } as object),
  } as http2.ServerSessionOptions;
}

/**
 * Watches one server session; returns a function that ends it for abuse
 * (GOAWAY ENHANCE_YOUR_CALM, then destroy after the grace).
 */
export function guardSession(session: http2.ServerHttp2Session, l: H2Limits, guard: ListenerGuard, remote: string | undefined): (reason: 'h2-resets' | 'h2-pings' | 'h2-settings', detail: string) => void {
  // A budget of one second's worth, refilled at the same rate: refused only past N in some second.
  const resets = new RateBudget(l.maxResetsPerSecond, l.maxResetsPerSecond);
  const pings = new RateBudget(l.maxPingsPerSecond, l.maxPingsPerSecond);
  const settings = new RateBudget(l.maxSettingsPerSecond, l.maxSettingsPerSecond);
  let ended = false;
  let grace: NodeJS.Timeout | undefined;

  const end = (reason: 'h2-resets' | 'h2-pings' | 'h2-settings' | 'h2-keepalive', detail: string): void => {
    if (ended) return;
    ended = true;
    guard.reject(reason, { remote, detail });
    if (reason === 'h2-keepalive') {
      session.destroy();
      return;
    }
    try {
      session.goaway(NGHTTP2_ENHANCE_YOUR_CALM, 0, Buffer.from(detail.slice(0, 128)));
    } catch {
      // already closing: the grace below still applies
    }
    grace = setTimeout(() => session.destroy(), l.goawayGraceMs);
    grace.unref();
  };

  session.on('stream', (stream: http2.ServerHttp2Stream) => {
    const opened = Date.now();
    stream.once('close', () => {
      if (stream.rstCode === NGHTTP2_NO_ERROR || stream.rstCode === undefined) return;
      // Reset before it was answered, or soon after it opened (the server's own resets count too: MadeYouReset).
      const now = Date.now();
      const premature = !stream.headersSent || now - opened < PREMATURE_MS;
      if (premature && !resets.take(now)) end('h2-resets', `more than ${l.maxResetsPerSecond} streams reset before an answer or within a second, in one second`);
    });
  });
  session.on('ping', () => {
    if (!pings.take()) end('h2-pings', `more than ${l.maxPingsPerSecond} PING frames in one second`);
  });
  session.on('remoteSettings', () => {
    if (!settings.take()) end('h2-settings', `more than ${l.maxSettingsPerSecond} SETTINGS frames in one second`);
  });
  session.on('error', (err: NodeJS.ErrnoException) => {
    guard.reject('h2-error', { remote, detail: err.code ?? err.message });
    session.destroy();
  });

  // An unanswered PING means the peer is gone or this session no longer reads: either way it is dead.
  let waiting: NodeJS.Timeout | undefined;
  const keepalive = setInterval(() => {
    if (session.destroyed || waiting) return;
    waiting = setTimeout(() => end('h2-keepalive', `no PING answer within ${l.keepaliveTimeoutMs} ms`), l.keepaliveTimeoutMs);
    waiting.unref();
    try {
      session.ping((err) => {
        clearTimeout(waiting);
        waiting = undefined;
        if (err && !session.destroyed) end('h2-keepalive', `PING failed: ${(err as NodeJS.ErrnoException).code ?? err.message}`);
      });
    } catch {
      // too many outstanding or closing: the timer above decides
    }
  }, l.keepaliveIntervalMs);
  keepalive.unref();

  session.once('close', () => {
    clearInterval(keepalive);
    clearTimeout(waiting);
    clearTimeout(grace);
  });
  return end;
}
