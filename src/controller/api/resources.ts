/** The Resources service: apply, get, list, delete and watch mesh objects (admin only). */
import * as grpc from '@grpc/grpc-js';

import { findKind, KINDS, type Resource } from '../../api/kinds';
import type * as pb from '../../api/proto';
import { parseLabelSelector, requirementsMatch } from '../../api/selectors';
import { validateDocuments, type SourceDoc } from '../../api/validate';
import { MeshError } from '../../errors';
import type { CertificateAuthority } from '../ca';
import { stableStringify, type Change, type Store } from '../store';
import { callerOf, requireAdmin } from './auth';
import { toStatus, unary, type HandlerContext } from './handler';

function kindOf(name: string): string {
  const k = findKind(name);
  if (!k) throw new MeshError('NM_ERR_USAGE', `unknown kind "${name}": one of ${Object.values(KINDS).map((x) => x.plural).join(', ')}`);
  return k.kind;
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
      const docs: SourceDoc[] = call.request.documents.map((d) => {
        let value: unknown;
        try {
          value = JSON.parse(d.json);
        } catch (err) {
          throw new MeshError('NM_ERR_INVALID_RESOURCE', `${d.source} doc ${d.index}: not JSON: ${(err as Error).message}`);
        }
        return { source: d.source || 'request', index: d.index || 1, value };
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
      const ns = KINDS[kind as keyof typeof KINDS].namespaced ? call.request.namespace || 'default' : undefined;
      const r = store.get(kind, ns, call.request.name);
      if (!r) throw new MeshError('NM_ERR_NOT_FOUND', `${kind.toLowerCase()} ${ns ? `${ns}/` : ''}${call.request.name} not found`);
      return { json: JSON.stringify(r) };
    }),

    List: unary<pb.ListRequest, pb.ListResponse>(ctx, 'Resources.List', (call) => {
      admin(call);
      const kind = kindOf(call.request.kind);
      const namespaced = KINDS[kind as keyof typeof KINDS].namespaced;
      const ns = !namespaced || call.request.allNamespaces ? undefined : call.request.namespace || 'default';
      const selector = call.request.labelSelector ? parseLabelSelector(call.request.labelSelector) : undefined;
      const version = store.version;
      const items = store
        .list({ kind, namespace: ns })
        .filter((r) => !selector || requirementsMatch(selector, r.metadata.labels))
        .map((r) => JSON.stringify(r));
      return { items, version };
    }),

    Delete: unary<pb.DeleteRequest, pb.DeleteResponse>(ctx, 'Resources.Delete', (call) => {
      admin(call);
      const targets = call.request.targets.map((t) => {
        const kind = kindOf(t.kind);
        return {
          kind,
          namespace: KINDS[kind as keyof typeof KINDS].namespaced ? t.namespace || 'default' : undefined,
          name: t.name,
          resourceVersion: t.resourceVersion || undefined,
        };
      });
      const deleted = store.delete(targets);
      return { deleted: deleted.map((r) => ({ json: JSON.stringify(r) })), version: store.version };
    }),

    Watch: (call: grpc.ServerWritableStream<pb.WatchRequest, pb.WatchEvent>) => {
      try {
        admin(call);
      } catch (err) {
        const s = toStatus(err);
        ctx.metrics.apiRequests.inc({ method: 'Resources.Watch', code: grpc.status[s.code] });
        call.destroy(Object.assign(new Error(s.details), { code: s.code, details: s.details }));
        return;
      }
      ctx.metrics.apiRequests.inc({ method: 'Resources.Watch', code: 'OK' });
      const kind = call.request.kind ? kindOf(call.request.kind) : undefined;
      const ns = call.request.namespace || undefined;
      const keep = (c: Change): boolean => (!kind || c.resource.kind === kind) && (!ns || c.resource.metadata.namespace === ns);
      const send = (c: Change): void => {
        if (keep(c)) call.write({ type: c.type, version: c.version, json: JSON.stringify(c.resource) });
      };
      // Subscribe first, then replay: nothing committed in between is lost;
      // versions already replayed are skipped.
      let replayedUpTo = call.request.fromVersion;
      const pending: Change[] = [];
      let replaying = true;
      const unsubscribe = store.subscribe((changes) => {
        if (replaying) pending.push(...changes);
        else for (const c of changes) if (c.version > replayedUpTo) send(c);
      });
      call.on('cancelled', unsubscribe);
      call.on('close', unsubscribe);
      if (call.request.fromVersion > 0) {
        const past = store.changesSince(call.request.fromVersion);
        if (past === 'compacted') {
          unsubscribe();
          call.destroy(Object.assign(new Error('from_version is older than the kept history: list again and watch from its version'), { code: grpc.status.OUT_OF_RANGE }));
          return;
        }
        for (const c of past) {
          send(c);
          replayedUpTo = c.version;
        }
      } else {
        replayedUpTo = store.version;
      }
      replaying = false;
      for (const c of pending) if (c.version > replayedUpTo) send(c);
    },
  };
}
