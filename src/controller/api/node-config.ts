/** The NodeConfig service: each node's config stream (node mTLS), the node list and revocation (admin). */
import * as net from 'node:net';

import * as grpc from '@grpc/grpc-js';

import { clip, LIMITS, quote, shown } from '../../api/limits';
import { services } from '../../api/proto';
import type * as pb from '../../api/proto';
import type { CertificateAuthority } from '../ca';
import type { ConfigHub, NodeChannel } from '../push';
import { MeshError } from '../../errors';
import { AuthError, callerOf, requireAdmin, requireNode } from './auth';
import { endStream, safeDetails, stream, toStatus, unary, type HandlerContext } from './handler';
import type { CertificateLedger } from './ledger';

/** The ConfigMessage encoder of NodeConfig.Stream, as loaded from the .proto. */
let encode: ((m: pb.ConfigMessage) => Buffer) | undefined;
function serializeConfigMessage(m: pb.ConfigMessage): Buffer {
  encode ??= (services().NodeConfig.service as unknown as { Stream: { responseSerialize: (m: pb.ConfigMessage) => Buffer } }).Stream.responseSerialize;
  return encode(m);
}

/**
 * NodeConfig's service definition with a response serializer that passes an
 * already serialized message through: the stream serializes each message
 * itself, to count its bytes (and, later, to reuse them).
 */
export function nodeConfigDefinition(): grpc.ServiceDefinition {
  const def = services().NodeConfig.service;
  const stream = def.Stream!;
  const inner = stream.responseSerialize;
  return { ...def, Stream: { ...stream, responseSerialize: (v: unknown) => (Buffer.isBuffer(v) ? v : inner(v)) } };
}

/** How long a node may take to say hello. */
const HELLO_TIMEOUT_MS = 10_000;

export function nodeConfigService(
  ctx: HandlerContext,
  hub: ConfigHub,
  ca: CertificateAuthority,
  ledger: CertificateLedger,
  /** Recomputes every node's revocation list and pushes it. */
  publishRevocations: () => void,
): grpc.UntypedServiceImplementation {
  return {
    Stream: stream<grpc.ServerDuplexStream<pb.NodeMessage, pb.ConfigMessage>>(ctx, 'NodeConfig.Stream', (call, guard) => {
      const peer = call.getPeer();
      let refused = false;
      const fail = (err: unknown): void => {
        if (refused) return;
        refused = true;
        const st = toStatus(err);
        ctx.log.warn({ peer, code: grpc.status[st.code], details: st.details }, 'node stream refused');
        endStream(ctx, 'NodeConfig.Stream', call, err);
      };
      let certNode: string;
      let serial: string;
      try {
        const caller = callerOf(call, ca, ledger);
        certNode = requireNode(caller);
        serial = caller.kind === 'node' ? caller.serial : '';
      } catch (err) {
        return fail(err);
      }
      let node: string | undefined;
      let closed = false;
      let maxMessageBytes = 0;
      const channel: NodeChannel = {
        peer,
        serial,
        get maxMessageBytes() {
          return maxMessageBytes;
        },
        send: (msg, flushed) => {
          if (closed) return;
          // Serialized here, so what is counted is what goes on the wire (the
          // service's serializer passes a Buffer through: see configMessageSerializer).
          const bytes = serializeConfigMessage(msg);
          if (msg.snapshot || msg.delta) ctx.metrics.configBytesSent.inc({ type: msg.snapshot ? 'snapshot' : 'delta' }, bytes.length);
          call.write(bytes as never, flushed);
        },
        close: (reason, status) => {
          if (closed) return;
          closed = true;
          ctx.log.info({ node, peer, reason }, 'node stream closed by the controller');
          if (status) {
            const code = status === 'denied' ? grpc.status.PERMISSION_DENIED : grpc.status.RESOURCE_EXHAUSTED;
            call.emit('error', Object.assign(new Error(reason), { code, details: safeDetails(reason) }));
          }
          call.end();
        },
      };
      const helloTimer = setTimeout(guard(() => fail(new AuthError(grpc.status.DEADLINE_EXCEEDED, 'no hello within 10 s'))), HELLO_TIMEOUT_MS);
      call.on(
        'data',
        guard((m: pb.NodeMessage) => {
          if (refused) return;
          if (!node) {
            if (m.msg !== 'hello' || !m.hello) return fail(new AuthError(grpc.status.INVALID_ARGUMENT, 'the first message must be a hello'));
            clearTimeout(helloTimer);
            if (m.hello.node !== certNode)
              return fail(new AuthError(grpc.status.PERMISSION_DENIED, `hello names node ${shown(m.hello.node)}, but the certificate is node ${certNode}`));
            const addresses = m.hello.addresses ?? [];
            if (addresses.length > LIMITS.maxNodeAddresses || addresses.some((a) => net.isIP(a) === 0))
              return fail(new AuthError(grpc.status.INVALID_ARGUMENT, `hello.addresses must be at most ${LIMITS.maxNodeAddresses} IP addresses`));
            // A revoke between the stream's start and its hello must not let it in.
            try {
              requireNode(callerOf(call, ca, ledger));
            } catch (err) {
              return fail(err);
            }
            node = certNode;
            maxMessageBytes = Math.min(m.hello.maxMessageBytes ?? 0, LIMITS.maxResponseBytes);
            const proxyVersion = clip(m.hello.proxyVersion, LIMITS.maxNodeTextChars);
            ctx.metrics.apiRequests.inc({ method: 'NodeConfig.Stream', code: 'OK' });
            ctx.log.info({ node, peer, holds: m.hello.version, proxyVersion }, 'node connected');
            hub.connect(node, m.hello.version, proxyVersion, channel, addresses);
            return;
          }
          switch (m.msg) {
            case 'ack':
              hub.ack(node, m.ack!.version);
              break;
            case 'nack': {
              const reason = clip(m.nack!.reason, LIMITS.maxNodeTextChars);
              ctx.log.warn({ node, version: m.nack!.version, reason }, 'node refused a config version');
              hub.nack(node, m.nack!.version, reason);
              break;
            }
            case 'heartbeat':
              hub.heartbeat(node);
              break;
            default:
              break;
          }
        }),
      );
      const done = (): void => {
        clearTimeout(helloTimer);
        closed = true;
        if (node) {
          hub.disconnect(node, channel);
          ctx.log.info({ node, peer }, 'node disconnected');
        }
      };
      call.on(
        'end',
        guard(() => {
          done();
          call.end();
        }),
      );
      call.on('cancelled', guard(done));
      call.on('error', guard(done));
    }),

    ListNodes: unary<Record<string, never>, { nodes: pb.NodeStatusMessage[] }>(ctx, 'NodeConfig.ListNodes', (call) => {
      requireAdmin(callerOf(call, ca, ledger));
      const streams = new Map(hub.nodes().map((n) => [n.node, n]));
      const records = new Map(ledger.nodes().map((n) => [n.node, n]));
      const names = [...new Set([...streams.keys(), ...records.keys()])].sort();
      return {
        nodes: names.map((name): pb.NodeStatusMessage => {
          const s = streams.get(name);
          const r = records.get(name);
          return {
            node: name,
            connected: s?.connected ?? false,
            sentVersion: s?.sentVersion ?? 0,
            ackedVersion: s?.ackedVersion ?? 0,
            nackedVersion: s?.nackedVersion ?? 0,
            nackReason: s?.nackReason ?? '',
            lastSeenUnixMs: s?.lastSeenUnixMs ?? 0,
            peer: s?.peer ?? '',
            proxyVersion: s?.proxyVersion ?? '',
            addresses: s?.addresses ?? [],
            streamCertificateSerial: s?.streamCertificateSerial ?? '',
            revoked: r?.revokedAt !== undefined,
            revokedUnixMs: r?.revokedAt ?? 0,
            certificateSerial: r?.certificate?.serial ?? '',
            certificateExpiresUnixMs: r?.certificate?.notAfter ?? 0,
            joinedUnixMs: r?.joinedAt ?? 0,
            workloadCertificates: r?.workloadCertificates ?? 0,
          };
        }),
      };
    }),

    RevokeNode: unary<{ node: string }, pb.RevokeNodeResponse>(ctx, 'NodeConfig.RevokeNode', (call) => {
      requireAdmin(callerOf(call, ca, ledger));
      const { node } = call.request;
      const known = ledger.node(node) !== undefined || hub.nodes().some((n) => n.node === node);
      if (!known) throw new MeshError('NM_ERR_NOT_FOUND', `node ${quote(node)} never joined this controller (see \`nodemesh node list\`)`);
      const serials = ledger.revoke(node);
      // The list first: by the time the node hears it is cut off, its peers refuse it already.
      publishRevocations();
      hub.revoke(node, `node ${node} was revoked: an admin must create a new token for it (nodemesh controller token create --node ${node}) and the node join again`);
      ctx.metrics.nodesRevoked.inc();
      ctx.log.warn({ event: 'security', node, serials }, 'node revoked');
      return { serials };
    }),
  };
}
