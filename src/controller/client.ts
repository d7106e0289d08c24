/**
 * A client of the controller's API, for the CLI (admin credential) and node
 * proxies (node certificate). Calls return promises; gRPC failures become
 * ClientErrors that say whether the controller was unreachable (exit 2 in
 * the CLI) or refused (exit 1), with the address tried.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import * as grpc from '@grpc/grpc-js';

import type { Resource } from '../api/kinds';
import { formatBytes, LIMITS } from '../api/limits';
import { services, type ApplyResponse, type ConfigMessage, type CreateTokenResponse, type Document, type NodeMessage, type NodeStatusMessage, type WatchEvent } from '../api/proto';
import { MeshError } from '../errors';
import { DEFAULT_DATA_DIR, SERVER_NAME, type Credentials } from '../api/credentials';

export const CREDENTIALS_ENV = 'NODEMESH_CREDENTIALS';

export class ClientError extends MeshError {
  constructor(
    code: string,
    message: string,
    readonly grpcCode: grpc.status,
    readonly unreachable: boolean,
  ) {
    super(code, message);
  }
}

/** Where the CLI looks for the admin credential: --credentials, $NODEMESH_CREDENTIALS, the default data dir. */
export function credentialsPath(flag?: string): string {
  return flag ?? process.env[CREDENTIALS_ENV] ?? path.join(DEFAULT_DATA_DIR, 'admin.json');
}

export function loadCredentials(file: string): Credentials {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new MeshError(
      'NM_ERR_CREDENTIALS',
      code === 'ENOENT'
        ? `no credentials at ${file}: the controller writes admin.json into its --data-dir on first start; pass --credentials FILE or set ${CREDENTIALS_ENV}`
        : `cannot read credentials ${file}: ${code ?? String(err)}${code === 'EACCES' ? ' (run as the user that started the controller, or root)' : ''}`,
    );
  }
  try {
    const c = JSON.parse(text) as Credentials;
    if (c.kind !== 'Credentials' || !c.controller || !c.ca || !c.cert || !c.key) throw new Error('missing fields');
    return c;
  } catch (err) {
    throw new MeshError('NM_ERR_CREDENTIALS', `${file} is not a nodemesh credentials file (${(err as Error).message})`);
  }
}

export interface Connection {
  /** host:port of the controller. */
  address: string;
  ca: string;
  /** Client certificate chain and key (absent: no client certificate, e.g. to join). */
  cert?: string;
  key?: string;
  serverName?: string;
}

type Unary<Req, Res> = (req: Req, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: Res) => void) => grpc.ClientUnaryCall;

export class ControllerClient {
  readonly address: string;
  readonly #clients: Record<'Resources' | 'NodeConfig' | 'Bootstrap' | 'Certificates', grpc.Client>;
  readonly #timeoutMs: number;
  readonly #maxRequestBytes: number;
  /** The largest message this client takes from the controller (its grpc.max_receive_message_length). */
  readonly maxResponseBytes: number;

  constructor(conn: Connection, opts: { timeoutMs?: number; maxRequestBytes?: number; maxResponseBytes?: number } = {}) {
    this.address = conn.address;
    this.#timeoutMs = opts.timeoutMs ?? 15_000;
    this.#maxRequestBytes = opts.maxRequestBytes ?? LIMITS.maxRequestBytes;
    this.maxResponseBytes = opts.maxResponseBytes ?? LIMITS.maxResponseBytes;
    const creds = grpc.credentials.createSsl(Buffer.from(conn.ca), conn.key ? Buffer.from(conn.key) : null, conn.cert ? Buffer.from(conn.cert) : null);
    const name = conn.serverName ?? SERVER_NAME;
    const options: grpc.ChannelOptions = {
      'grpc.ssl_target_name_override': name,
      'grpc.default_authority': name,
      'grpc.max_send_message_length': this.#maxRequestBytes,
      'grpc.max_receive_message_length': this.maxResponseBytes,
      // The channel's own reconnect back-off (grpc-js: 1 s doubling to 120 s) would hold a node's config stream long after the
      // controller is back, whatever the stream's back-off says: capped as that one is (2 s).
      'grpc.initial_reconnect_backoff_ms': 200,
      'grpc.max_reconnect_backoff_ms': 2_000,
    };
    const svc = services();
    // One channel for all four services.
    const first = new svc.Resources(conn.address, creds, options);
    const channel = { channelOverride: first.getChannel() };
    this.#clients = {
      Resources: first,
      NodeConfig: new svc.NodeConfig(conn.address, creds, { ...options, ...channel } as grpc.ChannelOptions),
      Bootstrap: new svc.Bootstrap(conn.address, creds, { ...options, ...channel } as grpc.ChannelOptions),
      Certificates: new svc.Certificates(conn.address, creds, { ...options, ...channel } as grpc.ChannelOptions),
    };
  }

  static fromCredentials(file: string, opts: { timeoutMs?: number; address?: string; maxRequestBytes?: number } = {}): ControllerClient {
    const c = loadCredentials(file);
    return new ControllerClient({ address: opts.address ?? c.controller, ca: c.ca, cert: c.cert, key: c.key, serverName: c.serverName }, opts);
  }

  #error(err: grpc.ServiceError): ClientError {
    const unreachable = err.code === grpc.status.UNAVAILABLE || err.code === grpc.status.DEADLINE_EXCEEDED;
    let msg = unreachable ? `cannot reach the controller at ${this.address}: ${err.details || err.message}` : err.details || err.message;
    // grpc-js's own words for a message over a size limit, on either side.
    if (err.code === grpc.status.RESOURCE_EXHAUSTED && /message larger than max/i.test(msg)) {
      msg = `${msg}: the controller takes requests of at most its --max-request-bytes (default ${formatBytes(LIMITS.maxRequestBytes)}) and answers with at most ${formatBytes(LIMITS.maxResponseBytes)}; send less per request`;
    }
    return new ClientError(unreachable ? 'NM_ERR_UNREACHABLE' : `NM_ERR_GRPC_${grpc.status[err.code]}`, msg, err.code, unreachable);
  }

  #call<Req, Res>(service: keyof ControllerClient['clients'], method: string, req: Req): Promise<Res> {
    const client = this.#clients[service] as unknown as Record<string, Unary<Req, Res>>;
    return new Promise((resolve, reject) => {
      client[method]!.call(client, req, new grpc.Metadata(), { deadline: Date.now() + this.#timeoutMs }, (err, res) =>
        err ? reject(this.#error(err)) : resolve(res as Res),
      );
    });
  }

  /** @internal */
  get clients(): Record<'Resources' | 'NodeConfig' | 'Bootstrap' | 'Certificates', grpc.Client> {
    return this.#clients;
  }

  apply(documents: Document[], dryRun = false): Promise<ApplyResponse> {
    // Checked here so a big apply gets this error rather than grpc-js's; framing adds a few bytes per document.
    const bytes = documents.reduce((n, d) => n + Buffer.byteLength(d.json) + Buffer.byteLength(d.source) + 16, 0);
    if (bytes > this.#maxRequestBytes) {
      return Promise.reject(
        new ClientError(
          'NM_ERR_TOO_LARGE',
          `these ${documents.length} documents make a ${formatBytes(bytes)} request, over the ${formatBytes(this.#maxRequestBytes)} limit of a request to the controller: apply them in several parts`,
          grpc.status.RESOURCE_EXHAUSTED,
          false,
        ),
      );
    }
    return this.#call('Resources', 'Apply', { documents, dryRun });
  }

  async get(kind: string, namespace: string, name: string): Promise<Resource> {
    const r = await this.#call<unknown, { json: string }>('Resources', 'Get', { kind, namespace, name });
    return JSON.parse(r.json) as Resource;
  }

  async list(kind: string, opts: { namespace?: string; allNamespaces?: boolean; labelSelector?: string } = {}): Promise<{ items: Resource[]; version: number }> {
    const r = await this.#call<unknown, { items: string[]; version: number }>('Resources', 'List', {
      kind,
      namespace: opts.namespace ?? '',
      allNamespaces: opts.allNamespaces ?? false,
      labelSelector: opts.labelSelector ?? '',
    });
    return { items: r.items.map((i) => JSON.parse(i) as Resource), version: r.version };
  }

  async delete(targets: { kind: string; namespace?: string; name: string; resourceVersion?: string }[]): Promise<{ deleted: Resource[]; version: number }> {
    const r = await this.#call<unknown, { deleted: { json: string }[]; version: number }>('Resources', 'Delete', {
      targets: targets.map((t) => ({ kind: t.kind, namespace: t.namespace ?? '', name: t.name, resourceVersion: t.resourceVersion ?? '' })),
    });
    return { deleted: r.deleted.map((d) => JSON.parse(d.json) as Resource), version: r.version };
  }

  /** Server stream of changes; the caller reads and cancels it. */
  watch(opts: { kind?: string; namespace?: string; fromVersion?: number } = {}): grpc.ClientReadableStream<WatchEvent> {
    const c = this.#clients.Resources as unknown as { Watch(req: unknown): grpc.ClientReadableStream<WatchEvent> };
    return c.Watch({ kind: opts.kind ?? '', namespace: opts.namespace ?? '', fromVersion: opts.fromVersion ?? 0 });
  }

  async listNodes(): Promise<NodeStatusMessage[]> {
    return (await this.nodeList()).nodes;
  }

  /** The nodes and the store version the controller pushes now (what a node that is current holds, or older when nothing since touched it). */
  nodeList(): Promise<{ nodes: NodeStatusMessage[]; version: number }> {
    return this.#call('NodeConfig', 'ListNodes', {});
  }

  /** node '': for any node name that never joined. ttlSeconds/uses 0: the controller's defaults (24 h, 1). */
  createToken(node: string, ttlSeconds = 0, uses = 0): Promise<CreateTokenResponse> {
    return this.#call('Bootstrap', 'CreateToken', { node, ttlSeconds, uses });
  }

  async revokeNode(node: string): Promise<string[]> {
    return (await this.#call<unknown, { serials: string[] }>('NodeConfig', 'RevokeNode', { node })).serials;
  }

  async join(token: string, node: string, csrPem: string): Promise<{ certificateChainPem: string; trustBundlePem: string; expiresUnixMs: number; trustDomain: string }> {
    return (await this.#call<unknown, { certificate: { certificateChainPem: string; trustBundlePem: string; expiresUnixMs: number; trustDomain: string } }>('Bootstrap', 'Join', { token, node, csrPem })).certificate;
  }

  async sign(csrPem: string): Promise<{ certificateChainPem: string; trustBundlePem: string; expiresUnixMs: number; trustDomain: string }> {
    return (await this.#call<unknown, { certificate: { certificateChainPem: string; trustBundlePem: string; expiresUnixMs: number; trustDomain: string } }>('Certificates', 'Sign', { csrPem })).certificate;
  }

  /** The node config stream (bidirectional). */
  configStream(): grpc.ClientDuplexStream<NodeMessage, ConfigMessage> {
    const c = this.#clients.NodeConfig as unknown as { Stream(): grpc.ClientDuplexStream<NodeMessage, ConfigMessage> };
    return c.Stream();
  }

  close(): void {
    for (const c of Object.values(this.#clients)) c.close();
  }
}

