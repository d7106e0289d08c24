/** Shared wrapping of gRPC handlers: errors become statuses, every call is counted and logged. */
import * as grpc from '@grpc/grpc-js';

import { MeshError } from '../../errors';
import type { Logger } from '../../log';
import type { ControllerMetrics } from '../metrics';
import { AuthError } from './auth';

const CODE_BY_ERROR: Record<string, grpc.status> = {
  NM_ERR_INVALID_RESOURCE: grpc.status.INVALID_ARGUMENT,
  NM_ERR_USAGE: grpc.status.INVALID_ARGUMENT,
  NM_ERR_INVALID_SELECTOR: grpc.status.INVALID_ARGUMENT,
  NM_ERR_CONFLICT: grpc.status.ABORTED,
  NM_ERR_NOT_FOUND: grpc.status.NOT_FOUND,
  NM_ERR_CA_REFUSED: grpc.status.PERMISSION_DENIED,
  NM_ERR_TOKEN: grpc.status.UNAUTHENTICATED,
  NM_ERR_COMPACTED: grpc.status.OUT_OF_RANGE,
};

export function toStatus(err: unknown): { code: grpc.status; details: string } {
  if (err instanceof AuthError) return { code: err.grpcCode, details: err.message };
  if (err instanceof MeshError) {
    const code = CODE_BY_ERROR[err.code] ?? (err.code.startsWith('NM_ERR_CA') ? grpc.status.INVALID_ARGUMENT : grpc.status.FAILED_PRECONDITION);
    return { code, details: err.message };
  }
  return { code: grpc.status.INTERNAL, details: `internal error: ${err instanceof Error ? err.message : String(err)}` };
}

export interface HandlerContext {
  log: Logger;
  metrics: ControllerMetrics;
}

/** A unary handler: `fn` returns the response or throws; the rest is done here. */
export function unary<Req, Res>(ctx: HandlerContext, method: string, fn: (call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res> | Res): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    Promise.resolve()
      .then(() => fn(call))
      .then(
        (res) => {
          ctx.metrics.apiRequests.inc({ method, code: 'OK' });
          callback(null, res);
        },
        (err: unknown) => {
          const s = toStatus(err);
          ctx.metrics.apiRequests.inc({ method, code: grpc.status[s.code] });
          if (s.code === grpc.status.INTERNAL) ctx.log.error({ err, method, peer: call.getPeer() }, 'request failed');
          else ctx.log.debug({ method, peer: call.getPeer(), code: grpc.status[s.code], details: s.details }, 'request refused');
          callback({ code: s.code, details: s.details });
        },
      );
  };
}
