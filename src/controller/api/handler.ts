/**
 * Shared wrapping of gRPC handlers: errors become statuses, every call is
 * counted and logged. Every handler of every service goes through `unary` or
 * `stream` here, so no request, however malformed, throws past them into
 * grpc-js or the event loop.
 */
import * as grpc from '@grpc/grpc-js';

import { LIMITS, toWellFormed } from '../../api/limits';
import { MeshError } from '../../errors';
import type { Logger } from '../../log';
import type { ControllerMetrics } from '../metrics';
import { AuthError } from './auth';

const CODE_BY_ERROR: Record<string, grpc.status> = {
  NM_ERR_INVALID_RESOURCE: grpc.status.INVALID_ARGUMENT,
  NM_ERR_USAGE: grpc.status.INVALID_ARGUMENT,
  NM_ERR_INVALID_SELECTOR: grpc.status.INVALID_ARGUMENT,
  NM_ERR_TOO_LARGE: grpc.status.RESOURCE_EXHAUSTED,
  NM_ERR_CONFLICT: grpc.status.ABORTED,
  NM_ERR_NOT_FOUND: grpc.status.NOT_FOUND,
  NM_ERR_CA_REFUSED: grpc.status.PERMISSION_DENIED,
  NM_ERR_TOKEN: grpc.status.UNAUTHENTICATED,
  NM_ERR_COMPACTED: grpc.status.OUT_OF_RANGE,
};

/** Bytes `c` (one code point) takes in grpc-message, which grpc-js fills with encodeURI. */
function encodedLength(c: string): number {
  const cp = c.codePointAt(0)!;
  if (cp < 0x80) return /[A-Za-z0-9;,/?:@&=+$\-_.!~*'()#]/.test(c) ? 1 : 3;
  return cp < 0x800 ? 6 : cp < 0x10000 ? 9 : 12;
}

/**
 * A status message grpc-js can send and every client can receive: grpc-js
 * percent-encodes it with encodeURI, which throws on a lone surrogate (an
 * uncaught throw that used to end the controller), and clients refuse
 * trailers over their metadata limit (8 KiB), so it is made well-formed and
 * cut to LIMITS.maxStatusDetailsBytes as encoded.
 */
export function safeDetails(details: string, max: number = LIMITS.maxStatusDetailsBytes): string {
  const text = toWellFormed(details);
  const note = (left: number): string => `… (${left} more characters cut: a gRPC status carries at most ${max} bytes)`;
  const budget = max - 120;
  let used = 0;
  let end = 0;
  for (const c of text) {
    const n = encodedLength(c);
    if (used + n > max) break;
    used += n;
    end += c.length;
  }
  if (end === text.length) return text;
  // Cut within the budget that leaves room for the note, at a line end when one is near.
  used = 0;
  end = 0;
  for (const c of text) {
    const n = encodedLength(c);
    if (used + n > budget) break;
    used += n;
    end += c.length;
  }
  const nl = text.lastIndexOf('\n', end);
  if (nl > budget / 2) end = nl;
  return text.slice(0, end) + note(text.length - end);
}

export function toStatus(err: unknown): { code: grpc.status; details: string } {
  if (err instanceof AuthError) return { code: err.grpcCode, details: safeDetails(err.message) };
  if (err instanceof MeshError) {
    const code = CODE_BY_ERROR[err.code] ?? (err.code.startsWith('NM_ERR_CA') ? grpc.status.INVALID_ARGUMENT : grpc.status.FAILED_PRECONDITION);
    return { code, details: safeDetails(err.message) };
  }
  return { code: grpc.status.INTERNAL, details: safeDetails(`internal error: ${err instanceof Error ? err.message : String(err)}`) };
}

export interface HandlerContext {
  log: Logger;
  metrics: ControllerMetrics;
}

function peerOf(call: { getPeer(): string }): string {
  try {
    return call.getPeer();
  } catch {
    return 'unknown';
  }
}

/** The one counter of calls by method and status: a unary call when it is answered, a stream once, when it ends. */
export function countCall(ctx: HandlerContext, method: string, code: grpc.status): void {
  ctx.metrics.apiRequests.inc({ method, code: grpc.status[code] });
}

/** Counts and logs a failed call; INTERNAL (our bug) at error with the stack, refusals at debug. */
function record(ctx: HandlerContext, method: string, call: { getPeer(): string }, err: unknown, s: { code: grpc.status; details: string }): void {
  countCall(ctx, method, s.code);
  if (s.code === grpc.status.INTERNAL) ctx.log.error({ err, method, peer: peerOf(call) }, 'request failed');
  else ctx.log.debug({ method, peer: peerOf(call), code: grpc.status[s.code], details: s.details }, 'request refused');
}

/** A unary handler: `fn` returns the response or throws; the rest is done here. */
export function unary<Req, Res>(ctx: HandlerContext, method: string, fn: (call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res> | Res): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    const fail = (err: unknown): void => {
      const s = toStatus(err);
      record(ctx, method, call, err, s);
      try {
        callback({ code: s.code, details: s.details });
      } catch (sendErr) {
        ctx.log.error({ err: sendErr, method, peer: peerOf(call) }, 'cannot send the status of a refused request');
      }
    };
    Promise.resolve()
      .then(() => fn(call))
      .then((res) => {
        countCall(ctx, method, grpc.status.OK);
        // A response grpc-js cannot serialize throws here, and becomes an INTERNAL status.
        callback(null, res);
      })
      .catch(fail);
  };
}

type AnyStream = grpc.ServerWritableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>;

/**
 * Ends a stream at once with the status for `err`. grpc-js turns an 'error'
 * event into the trailers; `destroy(err)` would instead drop the stream
 * without a status, leaving the client waiting for its deadline.
 */
export function endStream(ctx: HandlerContext, method: string, call: AnyStream, err: unknown): void {
  const s = toStatus(err);
  record(ctx, method, call, err, s);
  sendStatus(ctx, method, call, s);
}

/** Ends a stream with status `s` without counting it: for a stream that counts its own end (NodeConfig.Stream). */
export function sendStatus(ctx: HandlerContext, method: string, call: AnyStream, s: { code: grpc.status; details: string }): void {
  try {
    call.emit('error', Object.assign(new Error(s.details), { code: s.code, details: s.details }));
  } catch (sendErr) {
    ctx.log.error({ err: sendErr, method, peer: peerOf(call) }, 'cannot send the status of a refused stream');
  }
}

/**
 * A streaming handler (server or bidirectional). `fn` sets the stream up and
 * may throw; `guard` wraps each of its event handlers so a throw there ends
 * that stream with a status instead of reaching the event loop.
 */
export function stream<S extends AnyStream>(
  ctx: HandlerContext,
  method: string,
  fn: (call: S, guard: <A extends unknown[]>(f: (...args: A) => void) => (...args: A) => void) => void,
): (call: S) => void {
  return (call) => {
    const guard =
      <A extends unknown[]>(f: (...args: A) => void) =>
      (...args: A): void => {
        try {
          f(...args);
        } catch (err) {
          endStream(ctx, method, call, err);
        }
      };
    guard(() => fn(call, guard))();
  };
}
