/** The NodeConfig service: each node's config stream (node mTLS), and the node list (admin). */
import * as grpc from '@grpc/grpc-js';

import type * as pb from '../../api/proto';
import type { CertificateAuthority } from '../ca';
import type { ConfigHub, NodeChannel } from '../push';
import { AuthError, callerOf, requireAdmin, requireNode } from './auth';
import { toStatus, unary, type HandlerContext } from './handler';

/** How long a node may take to say hello. */
const HELLO_TIMEOUT_MS = 10_000;

export function nodeConfigService(ctx: HandlerContext, hub: ConfigHub, ca: CertificateAuthority): grpc.UntypedServiceImplementation {
  return {
    Stream: (call: grpc.ServerDuplexStream<pb.NodeMessage, pb.ConfigMessage>) => {
      const peer = call.getPeer();
      const fail = (err: unknown): void => {
        const s = toStatus(err);
        ctx.metrics.apiRequests.inc({ method: 'NodeConfig.Stream', code: grpc.status[s.code] });
        ctx.log.warn({ peer, code: grpc.status[s.code], details: s.details }, 'node stream refused');
        call.emit('error', Object.assign(new Error(s.details), { code: s.code, details: s.details }));
        call.end();
      };
      let certNode: string;
      try {
        certNode = requireNode(callerOf(call, ca));
      } catch (err) {
        return fail(err);
      }
      let node: string | undefined;
      let closed = false;
      const channel: NodeChannel = {
        peer,
        send: (msg) => {
          if (!closed) call.write(msg);
        },
        close: (reason) => {
          if (closed) return;
          closed = true;
          ctx.log.info({ node, peer, reason }, 'node stream closed by the controller');
          call.end();
        },
      };
      const helloTimer = setTimeout(() => fail(new AuthError(grpc.status.DEADLINE_EXCEEDED, 'no hello within 10 s')), HELLO_TIMEOUT_MS);
      call.on('data', (m: pb.NodeMessage) => {
        if (!node) {
          if (m.msg !== 'hello' || !m.hello) return fail(new AuthError(grpc.status.INVALID_ARGUMENT, 'the first message must be a hello'));
          clearTimeout(helloTimer);
          if (m.hello.node !== certNode)
            return fail(new AuthError(grpc.status.PERMISSION_DENIED, `hello names node ${m.hello.node}, but the certificate is node ${certNode}`));
          node = certNode;
          ctx.metrics.apiRequests.inc({ method: 'NodeConfig.Stream', code: 'OK' });
          ctx.log.info({ node, peer, holds: m.hello.version, proxyVersion: m.hello.proxyVersion }, 'node connected');
          hub.connect(node, m.hello.version, m.hello.proxyVersion, channel, m.hello.addresses ?? []);
          return;
        }
        switch (m.msg) {
          case 'ack':
            hub.ack(node, m.ack!.version);
            break;
          case 'nack':
            ctx.log.warn({ node, version: m.nack!.version, reason: m.nack!.reason }, 'node refused a config version');
            hub.nack(node, m.nack!.version, m.nack!.reason);
            break;
          case 'heartbeat':
            hub.heartbeat(node);
            break;
          default:
            break;
        }
      });
      const done = (): void => {
        clearTimeout(helloTimer);
        closed = true;
        if (node) {
          hub.disconnect(node, channel);
          ctx.log.info({ node, peer }, 'node disconnected');
        }
      };
      call.on('end', () => {
        done();
        call.end();
      });
      call.on('cancelled', done);
      call.on('error', done);
    },

    ListNodes: unary<Record<string, never>, { nodes: pb.NodeStatusMessage[] }>(ctx, 'NodeConfig.ListNodes', (call) => {
      requireAdmin(callerOf(call, ca));
      return { nodes: hub.nodes() };
    }),
  };
}
