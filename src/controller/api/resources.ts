/** The Resources service: apply, get, list, delete and watch mesh objects (admin only). */
import * as grpc from '@grpc/grpc-js';

import { findKind, KINDS, type Resource } from '../../api/kinds';
import { clip, isWellFormed, LIMITS, quote, shown } from '../../api/limits';
import type * as pb from '../../api/proto';
import { parseLabelSelector, requirementsMatch } from '../../api/selectors';
import { validateDocuments, type SourceDoc } from '../../api/validate';
import { MeshError } from '../../errors';
import type { CertificateAuthority } from '../ca';
import { stableStringify, type Change, type Store } from '../store';
import { callerOf, requireAdmin } from './auth';
import { endStream, stream, unary, type HandlerContext } from './handler';

function kindOf(name: string): string {
  const k = findKind(name);
  if (!k) throw new MeshError('NM_ERR_USAGE', `unknown kind ${quote(name)}: one of ${Object.values(KINDS).map((x) => x.plural).join(', ')}`);
  return k.kind;
}

/** A name, namespace or selector from a request: well-formed and bounded, or a usage error naming the field. */
function field(what: string, value: string, max: number = LIMITS.maxRequestNameChars): string {
  if (value.length > max) throw new MeshError('NM_ERR_USAGE', `${what} ${quote(value)} is longer than ${max} characters, the limit`);
  if (!isWellFormed(value)) throw new MeshError('NM_ERR_USAGE', `${what} ${quote(value)} is not well-formed Unicode (a lone surrogate)`);
  return value;
}

function countLimit(what: string, n: number): void {
  if (n > LIMITS.maxDocuments) throw new MeshError('NM_ERR_TOO_LARGE', `${n} ${what} in one request, over the limit of ${LIMITS.maxDocuments}: send them in several requests`);
}

function sameIntent(a: Resource, b: Resource): boolean {
  const pick = (r: Resource): string => stableStringify({ l: r.metadata.labels ?? {}, a: r.metadata.annotations ?? {}, s: r.spec });
  return pick(a) === pick(b);
}

export function resourcesService(ctx: HandlerContext, store: Store, ca: CertificateAuthority): grpc.UntypedServiceImplementation {
  const admin = (call: { getAuthContext?: unknown; getPeer(): string }): void => requireAdmin(callerOf(call as never, ca));

  return {
    Apply: unary<pb.ApplyRequest, pb.ApplyResponse>(ctx, 'Resources.Apply', (call) => {
      admin(call);
      countLimit('documents', call.request.documents.length);
      const docs: SourceDoc[] = call.request.documents.map((d) => {
        const source = field('source', d.source, LIMITS.maxSourceChars) || 'request';
        let value: unknown;
        try {
          value = JSON.parse(d.json);
        } catch (err) {
          // V8 quotes part of the input in its message.
          throw new MeshError('NM_ERR_INVALID_RESOURCE', `${shown(source)} doc ${d.index || 1}: not JSON: ${clip((err as Error).message, 200)}`);
        }
        return { source, index: d.index || 1, value };
      });
      const resources = validateDocuments(docs);
      if (call.request.dryRun) {
        return {
          version: store.version,
          results: resources.map((r) => {
            const old = store.get(r.kind, r.metadata.namespace, r.metadata.name);
            const action = !old ? 'created' : sameIntent(old, r) ? 'unchanged' : 'configured';
            return { kind: r.kind, namespace: r.metadata.namespace ?? '', name: r.metadata.name, action, resourceVersion: old?.metadata.resourceVersion ?? '' };
          }),
        };
      }
      const outcomes = store.apply(resources);
      ctx.log.info({ objects: outcomes.length, changed: outcomes.filter((o) => o.action !== 'unchanged').length, version: store.version }, 'applied');
      return {
        version: store.version,
        results: outcomes.map((o) => ({
          kind: o.resource.kind,
          namespace: o.resource.metadata.namespace ?? '',
          name: o.resource.metadata.name,
          action: o.action,
          resourceVersion: o.resource.metadata.resourceVersion ?? '',
        })),
      };
    }),

    Get: unary<pb.GetRequest, pb.ObjectMessage>(ctx, 'Resources.Get', (call) => {
      admin(call);
      const kind = kindOf(call.request.kind);
      const ns = KINDS[kind as keyof typeof KINDS].namespaced ? field('namespace', call.request.namespace) || 'default' : undefined;
      const name = field('name', call.request.name);
      const r = store.get(kind, ns, name);
      if (!r) throw new MeshError('NM_ERR_NOT_FOUND', `${kind.toLowerCase()} ${ns ? `${shown(ns)}/` : ''}${shown(name)} not found`);
      return { json: JSON.stringify(r) };
    }),

    List: unary<pb.ListRequest, pb.ListResponse>(ctx, 'Resources.List', (call) => {
      admin(call);
      const kind = kindOf(call.request.kind);
      const namespaced = KINDS[kind as keyof typeof KINDS].namespaced;
      const ns = !namespaced || call.request.allNamespaces ? undefined : field('namespace', call.request.namespace) || 'default';
      const text = field('labelSelector', call.request.labelSelector, LIMITS.maxSelectorChars);
      const selector = text ? parseLabelSelector(text) : undefined;
      const version = store.version;
      const items = store
        .list({ kind, namespace: ns })
        .filter((r) => !selector || requirementsMatch(selector, r.metadata.labels))
        .map((r) => JSON.stringify(r));
      return { items, version };
    }),

    Delete: unary<pb.DeleteRequest, pb.DeleteResponse>(ctx, 'Resources.Delete', (call) => {
      admin(call);
      countLimit('delete targets', call.request.targets.length);
      const targets = call.request.targets.map((t) => {
        const kind = kindOf(t.kind);
        return {
          kind,
          namespace: KINDS[kind as keyof typeof KINDS].namespaced ? field('namespace', t.namespace) || 'default' : undefined,
          name: field('name', t.name),
          resourceVersion: field('resourceVersion', t.resourceVersion) || undefined,
        };
      });
      const deleted = store.delete(targets);
      return { deleted: deleted.map((r) => ({ json: JSON.stringify(r) })), version: store.version };
    }),

    Watch: stream<grpc.ServerWritableStream<pb.WatchRequest, pb.WatchEvent>>(ctx, 'Resources.Watch', (call, guard) => {
      // The caller and the request are checked before anything streams: a refusal ends the call at once with its code.
      admin(call);
      const kind = call.request.kind ? kindOf(call.request.kind) : undefined;
      const ns = field('namespace', call.request.namespace) || undefined;
      ctx.metrics.apiRequests.inc({ method: 'Resources.Watch', code: 'OK' });
      const keep = (c: Change): boolean => (!kind || c.resource.kind === kind) && (!ns || c.resource.metadata.namespace === ns);
      let ended = false;
      // The replay the client asked for is queued at once (the store's history bounds it);
      // live changes may queue LIMITS.maxWatchBacklog more before a watcher that stops reading is ended.
      let replayed = 0;
      const send = (c: Change): void => {
        if (ended || !keep(c)) return;
        if (replaying) replayed++;
        else if (call.writableLength >= replayed + LIMITS.maxWatchBacklog) {
          ended = true;
          unsubscribe();
          endStream(ctx, 'Resources.Watch', call, new MeshError('NM_ERR_TOO_LARGE', `this watcher fell ${LIMITS.maxWatchBacklog} events behind, the limit: read faster, or list again and watch from its version`));
          return;
        }
        call.write({ type: c.type, version: c.version, json: JSON.stringify(c.resource) });
      };
      // Subscribe first, then replay: nothing committed in between is lost;
      // versions already replayed are skipped.
      let replayedUpTo = call.request.fromVersion;
      const pending: Change[] = [];
      let replaying = true;
      const unsubscribe = store.subscribe(
        guard((changes: Change[]) => {
          if (replaying) pending.push(...changes);
          else for (const c of changes) if (c.version > replayedUpTo) send(c);
        }),
      );
      call.on('cancelled', unsubscribe);
      call.on('close', unsubscribe);
      call.on('error', unsubscribe);
      try {
        if (call.request.fromVersion > 0) {
          const past = store.changesSince(call.request.fromVersion);
          if (past === 'compacted') throw new MeshError('NM_ERR_COMPACTED', 'from_version is older than the kept history: list again and watch from its version');
          for (const c of past) {
            send(c);
            replayedUpTo = c.version;
          }
        } else {
          replayedUpTo = store.version;
        }
      } catch (err) {
        unsubscribe();
        throw err;
      }
      replaying = false;
      for (const c of pending) if (c.version > replayedUpTo) send(c);
    }),
  };
}
