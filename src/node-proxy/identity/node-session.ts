/**
 * The node's session with the controller: its node certificate (loaded, or
 * made by joining with a bootstrap token) and the one ControllerClient that
 * presents it. At half the certificate's life it renews through
 * Certificates.Sign and replaces the client, so every later call, and the
 * config stream once it is moved over (onRenewed), presents the new
 * certificate: a gRPC channel keeps the certificate it was made with.
 */
import * as fs from 'node:fs';

import { ControllerClient } from '../../controller/client';
import { MeshError } from '../../errors';
import { silentLogger, type Logger } from '../../log';
import { joinController, loadNodeIdentity, renewNodeIdentity, type NodeIdentity } from './node-identity';

/** The environment variable a bootstrap token may come in (the other way is --token-file). */
export const TOKEN_ENV = 'NODEMESH_BOOTSTRAP_TOKEN';

export const NODE_SESSION_DEFAULTS = Object.freeze({
  /** After a failed renewal. */
  renewRetryMs: 60_000,
  /** Never renew more often than this, however short the certificate. */
  minRenewMs: 1_000,
});

export class NodeSessionError extends MeshError {}

/**
 * The bootstrap token from `file` (its first line), else from $NODEMESH_BOOTSTRAP_TOKEN;
 * undefined when neither is given.
 */
export function readBootstrapToken(file: string | undefined, env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (file !== undefined) {
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (err) {
      throw new NodeSessionError('NM_ERR_NO_TOKEN', `cannot read --token-file ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    }
    const token = text.split('\n')[0]!.trim();
    if (!token) throw new NodeSessionError('NM_ERR_NO_TOKEN', `--token-file ${file} is empty: write the token from \`nodemesh controller token create\` into it`);
    return token;
  }
  const v = env[TOKEN_ENV]?.trim();
  return v ? v : undefined;
}

export interface NodeSessionOptions {
  node: string;
  controller: string;
  stateDir: string;
  /** Needed only when the state dir holds no valid node certificate. */
  token?: string;
  /** The controller's CA (PEM file), to trust it when joining. */
  caFile?: string;
  log?: Logger;
  /** The client was replaced after a renewal (the old one is closed right after this returns). */
  onRenewed?: (client: ControllerClient, identity: NodeIdentity) => void;
}

export class NodeSession {
  readonly #o: NodeSessionOptions;
  readonly #log: Logger;
  #identity: NodeIdentity;
  #client: ControllerClient;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  #renewals = 0;

  private constructor(o: NodeSessionOptions, identity: NodeIdentity) {
    this.#o = o;
    this.#log = (o.log ?? silentLogger()).child({ component: 'node-session', node: o.node });
    this.#identity = identity;
    this.#client = this.#clientFor(identity);
    this.#schedule();
  }

  /** Loads the node certificate from the state dir, or joins with the token. */
  static async open(o: NodeSessionOptions): Promise<NodeSession> {
    fs.mkdirSync(o.stateDir, { recursive: true, mode: 0o700 });
    const identity = loadNodeIdentity(o.stateDir) ?? (await NodeSession.#join(o));
    return new NodeSession(o, identity);
  }

  static async #join(o: NodeSessionOptions): Promise<NodeIdentity> {
    if (!o.token)
      throw new NodeSessionError(
        'NM_ERR_NO_TOKEN',
        `node ${o.node} has no certificate in ${o.stateDir}: give a bootstrap token from \`nodemesh controller token create --node ${o.node}\` in a file (--token-file FILE) or in $${TOKEN_ENV}`,
      );
    if (!o.caFile) throw new NodeSessionError('NM_ERR_NO_CA', 'joining needs the controller CA to trust it: give --ca-file (the controller data dir holds it as ca/ca.crt)');
    let caPem: string;
    try {
      caPem = fs.readFileSync(o.caFile, 'utf8');
    } catch (err) {
      throw new NodeSessionError('NM_ERR_NO_CA', `cannot read --ca-file ${o.caFile}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    }
    const id = await joinController({ dir: o.stateDir, node: o.node, controller: o.controller, token: o.token, caPem });
    (o.log ?? silentLogger()).info({ node: o.node, notAfter: id.notAfter }, 'joined the controller');
    return id;
  }

  get client(): ControllerClient {
    return this.#client;
  }

  get identity(): NodeIdentity {
    return this.#identity;
  }

  get renewals(): number {
    return this.#renewals;
  }

  #clientFor(id: NodeIdentity): ControllerClient {
    return new ControllerClient({ address: this.#o.controller, ca: id.caPem, cert: id.certPem, key: id.keyPem });
  }

  #schedule(delayMs?: number): void {
    if (this.#closed) return;
    const half = (this.#identity.notAfter.getTime() - Date.now()) / 2;
    const ms = delayMs ?? Math.max(NODE_SESSION_DEFAULTS.minRenewMs, half);
    this.#timer = setTimeout(() => void this.renew().catch(() => {}), Math.min(ms, 2 ** 31 - 1));
    this.#timer.unref();
  }

  /** Renews now (also what the timer does); the new client replaces the old one. */
  async renew(): Promise<NodeIdentity> {
    clearTimeout(this.#timer);
    try {
      const id = await renewNodeIdentity(this.#o.stateDir, this.#o.node, this.#client, this.#identity);
      if (this.#closed) return id;
      const old = this.#client;
      this.#identity = id;
      this.#client = this.#clientFor(id);
      this.#renewals++;
      this.#o.onRenewed?.(this.#client, id);
      old.close();
      this.#log.info({ notAfter: id.notAfter }, 'node certificate renewed; the controller connection now presents it');
      this.#schedule();
      return id;
    } catch (err) {
      this.#log.warn({ err: err instanceof Error ? err.message : String(err), retryInMs: NODE_SESSION_DEFAULTS.renewRetryMs }, 'node certificate renewal failed');
      const left = this.#identity.notAfter.getTime() - Date.now();
      this.#schedule(Math.min(NODE_SESSION_DEFAULTS.renewRetryMs, Math.max(NODE_SESSION_DEFAULTS.minRenewMs, left / 2)));
      throw err;
    }
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#client.close();
  }
}
