/** The NodeConfig service: each node's config stream (node mTLS), the node list and revocation (admin). */
import * as net from 'node:net';

import * as grpc from '@grpc/grpc-js';

import { clip, LIMITS, quote, shown } from '../../api/limits';
import { services } from '../../api/proto';
import type * as pb from '../../api/proto';
import type { CertificateAuthority } from '../ca';
import type { ConfigHub, NodeChannel, StreamEndReason } from '../push';
import { MeshError } from '../../errors';
import { AuthError, callerOf, requireAdmin, requireNode } from './auth';
import { countCall, safeDetails, sendStatus, stream, toStatus, unary, type HandlerContext } from './handler';
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
const METHOD = 'NodeConfig.Stream';

export function nodeConfigService(
  ctx: HandlerContext,
  hub: ConfigHub,
  ca: CertificateAuthority,
  ledger: CertificateLedger,
  /** Recomputes every node's revocation list and pushes it. */
  publishRevocations: () => void,
): grpc.UntypedServiceImplementation {
  return {
    Stream: stream<grpc.ServerDuplexStream<pb.NodeMessage, pb.ConfigMessage>>(ctx, METHOD, (call) => {
      const peer = call.getPeer();
      /** From the certificate: known once the caller is authenticated as a node. */
      let certNode: string | undefined;
      /** Once its hello is taken. */
      let node: string | undefined;
      let helloTimer: NodeJS.Timeout | undefined;
      let ended = false;
      /**
       * The one place a stream's end is counted (by its real code and a reason
       * class), logged and told to the hub; every way a stream ends comes here
       * once. `send`: the controller ends it with that status; a node's own
       * end or cancel needs none. `byHub`: the hub closed it and has already
       * moved the node's state on (calling back into it would undo that).
       */
      const end = (code: grpc.status, reason: StreamEndReason, details: string, how: { send: boolean; byHub?: boolean }): void => {
        if (ended) return;
        ended = true;
        clearTimeout(helloTimer);
        const name = grpc.status[code];
        countCall(ctx, METHOD, code);
        ctx.metrics.nodeStreamEnds.inc({ code: name, reason });
        if (certNode) hub.streamEnded(certNode, name, reason, details);
        if (node && !how.byHub) hub.disconnect(node, channel);
        if (node) ctx.log.info({ node, peer, code: name, reason, details }, 'node disconnected');
        if (!how.send) return;
        if (code === grpc.status.OK) call.end();
        else sendStatus(ctx, METHOD, call, { code, details: safeDetails(details) });
      };
      const fail = (err: unknown, reason: StreamEndReason): void => {
        if (ended) return;
        const st = toStatus(err);
        if (st.code === grpc.status.INTERNAL) {
          ctx.log.error({ err, peer, node: certNode }, 'node stream failed');
          reason = 'internal';
        } else ctx.log.warn({ peer, code: grpc.status[st.code], details: st.details }, 'node stream refused');
        end(st.code, reason, st.details, { send: true });
      };
      /** Event handlers: a throw in one (a controller bug) ends this stream, counted, instead of reaching the event loop. */
      const safe =
        <A extends unknown[]>(f: (...args: A) => void) =>
        (...args: A): void => {
          try {
            f(...args);
          } catch (err) {
            fail(err, 'internal');
          }
        };
      let serial = '';
      try {
        const caller = callerOf(call, ca, ledger);
        certNode = requireNode(caller);
        serial = caller.kind === 'node' ? caller.serial : '';
      } catch (err) {
        return fail(err, 'not-a-node');
      }
      let maxMessageBytes = 0;
      const channel: NodeChannel = {
        peer,
        serial,
        get maxMessageBytes() {
          return maxMessageBytes;
        },
        send: (msg, flushed) => {
          if (ended) return;
          try {
            // Parts come serialized from the hub; the rest is serialized here. Either
            // way what is counted is what goes on the wire (the service's serializer
            // passes a Buffer through: see nodeConfigDefinition).
            const bytes = Buffer.isBuffer(msg.encoded) ? msg.encoded : serializeConfigMessage(msg.message!);
            if (msg.type) ctx.metrics.configBytesSent.inc({ type: msg.type }, bytes.length);
            call.write(bytes as never, flushed);
          } catch (err) {
            ctx.log.error({ err, node, peer }, 'cannot send a config message to the node');
            // Inside a hub loop: the hub hears of the end after it, not in the middle.
            end(grpc.status.INTERNAL, 'send-failed', `cannot send to the node: ${err instanceof Error ? err.message : String(err)}`, { send: true, byHub: true });
            const n = node;
            if (n) queueMicrotask(() => hub.disconnect(n, channel));
          }
        },
        close: (reason, status, cause) => {
          if (ended) return;
          const why = cause ?? (status === 'denied' ? 'revoked' : status === 'exhausted' ? 'too-large' : 'controller-closed');
          ctx.log.info({ node, peer, reason, cause: why }, 'node stream closed by the controller');
          // A stopping controller ends streams as UNAVAILABLE: the node retries, as it would on a dropped connection.
          const code =
            status === 'denied'
              ? grpc.status.PERMISSION_DENIED
              : status === 'exhausted'
                ? grpc.status.RESOURCE_EXHAUSTED
                : why === 'controller-stopping'
                  ? grpc.status.UNAVAILABLE
                  : grpc.status.OK;
          end(code, why, reason, { send: true, byHub: true });
        },
      };
      hub.streamOpened(certNode);
      const cert = certNode;
      helloTimer = setTimeout(safe(() => fail(new AuthError(grpc.status.DEADLINE_EXCEEDED, `no hello within ${HELLO_TIMEOUT_MS / 1000} s`), 'hello-timeout')), HELLO_TIMEOUT_MS);
      call.on(
        'data',
        safe((m: pb.NodeMessage) => {
          if (ended) return;
          if (!node) {
            if (m.msg !== 'hello' || !m.hello) return fail(new AuthError(grpc.status.INVALID_ARGUMENT, 'the first message must be a hello'), 'bad-hello');
            clearTimeout(helloTimer);
            if (m.hello.node !== cert)
              return fail(new AuthError(grpc.status.PERMISSION_DENIED, `hello names node ${shown(m.hello.node)}, but the certificate is node ${cert}`), 'bad-hello');
            const addresses = m.hello.addresses ?? [];
            if (addresses.length > LIMITS.maxNodeAddresses || addresses.some((a) => net.isIP(a) === 0))
              return fail(new AuthError(grpc.status.INVALID_ARGUMENT, `hello.addresses must be at most ${LIMITS.maxNodeAddresses} IP addresses`), 'bad-hello');
            const held = hub.addressHeldBy(cert, addresses);
            if (held)
              return fail(
                new AuthError(grpc.status.PERMISSION_DENIED, `hello.addresses: ${held.address} is node ${held.node}'s, which is connected: a node publishes only its own addresses (check --proxy-ip on node ${cert})`),
                'bad-hello',
              );
            // A revoke between the stream's start and its hello must not let it in.
            try {
              requireNode(callerOf(call, ca, ledger));
            } catch (err) {
              return fail(err, 'revoked');
            }
            node = cert;
            maxMessageBytes = Math.min(m.hello.maxMessageBytes ?? 0, LIMITS.maxResponseBytes);
            const proxyVersion = clip(m.hello.proxyVersion, LIMITS.maxNodeTextChars);
            const lastError = clip(m.hello.lastError ?? '', LIMITS.maxNodeTextChars);
            ctx.log.info({ node, peer, holds: m.hello.version, proxyVersion, ...(lastError ? { lastError } : {}) }, 'node connected');
            hub.streamReported(node, lastError);
            const failMode = m.hello.failMode === 'fail-open' || m.hello.failMode === 'fail-closed' ? m.hello.failMode : '';
            hub.connect(node, m.hello.version, proxyVersion, channel, addresses, failMode);
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
      call.on(
        'end',
        safe(() => {
          // A node's cancel (RST_STREAM) ends the reading side too, and is reported as 'cancelled' only after this
          // turn of the event loop: calling this a clean end at once counted every cancel as OK.
          setImmediate(
            safe(() => {
              if (!call.cancelled) end(grpc.status.OK, 'node-ended', 'the node ended the stream', { send: true });
            }),
          );
        }),
      );
      // grpc-js also reports a status it sent itself (a message from the node it could not decode) as a cancel.
      call.on(
        'cancelled',
        safe(() => end(grpc.status.CANCELLED, 'node-cancelled', 'the node cancelled the stream or its connection closed', { send: false })),
      );
      // Only an error the controller did not raise itself gets here: the ones it raises come after end().
      call.on(
        'error',
        safe((err: Partial<grpc.StatusObject> & Error) => end(typeof err.code === 'number' ? err.code : grpc.status.UNKNOWN, 'node-error', err.details || err.message, { send: false })),
      );
    }),

    ListNodes: unary<Record<string, never>, { nodes: pb.NodeStatusMessage[]; version: number }>(ctx, 'NodeConfig.ListNodes', (call) => {
      requireAdmin(callerOf(call, ca, ledger));
      const streams = new Map(hub.nodes().map((n) => [n.node, n]));
      const records = new Map(ledger.nodes().map((n) => [n.node, n]));
      // A node whose every stream was refused at hello has a stream record and nothing else.
      const names = [...new Set([...streams.keys(), ...records.keys(), ...hub.streamNodes()])].sort();
      return {
        version: hub.version,
        nodes: names.map((name): pb.NodeStatusMessage => {
          const s = streams.get(name);
          const r = records.get(name);
          const h = hub.streamRecord(name);
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
            lastError: h?.lastError ?? '',
            lastErrorUnixMs: h?.lastErrorUnixMs ?? 0,
            streamsOpened: h?.streamsOpened ?? 0,
            failMode: s?.failMode ?? '',
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
