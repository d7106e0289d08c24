/**
 * The node's side of the config stream: say hello with the version held,
 * apply what arrives to ConfigState, ACK or NACK each version, reconnect with
 * backoff when the stream breaks (keeping the last good config meanwhile),
 * and resume from the version held.
 */
import { EventEmitter } from 'node:events';

import type * as grpc from '@grpc/grpc-js';

import type { ConfigMessage, NodeMessage } from '../../api/proto';
import type { ControllerClient } from '../../controller/client';
import { silentLogger, type Logger } from '../../log';
import { ConfigRejected, ConfigState, type ApplyResult, type Progress, type Staged } from './config-state';

export interface ConfigStreamOptions {
  client: ControllerClient;
  node: string;
  proxyVersion?: string;
  /** Where other nodes reach this node's proxy (sent in the hello). */
  addresses?: string[];
  state?: ConfigState;
  log?: Logger;
  /** First reconnect delay; doubles up to maxBackoffMs. */
  backoffMs?: number;
  maxBackoffMs?: number;
  /** The proxy's own check of a version before it is taken: a reason refuses it. */
  validate?: (staged: Staged) => string | null;
}

export interface ConfigStreamEvents {
  /** A version was applied and ACKed. */
  update: [result: ApplyResult];
  nack: [version: number, reason: string];
  /** A part of a snapshot or delta arrived; the version is taken when its last part has. */
  part: [progress: Progress];
  connected: [];
  disconnected: [reason: string];
}

export class ConfigStream extends EventEmitter<ConfigStreamEvents> {
  readonly state: ConfigState;
  readonly #opts: ConfigStreamOptions;
  readonly #log: Logger;
  #client: ControllerClient;
  #call: grpc.ClientDuplexStream<NodeMessage, ConfigMessage> | undefined;
  #stopped = false;
  #backoff: number;
  #timer: NodeJS.Timeout | undefined;
  #connected = false;

  constructor(opts: ConfigStreamOptions) {
    super();
    this.#opts = opts;
    this.#client = opts.client;
    this.state = opts.state ?? new ConfigState();
    this.#log = (opts.log ?? silentLogger()).child({ component: 'config-stream', node: opts.node });
    this.#backoff = opts.backoffMs ?? 200;
  }

  get connected(): boolean {
    return this.#connected;
  }

  start(): void {
    this.#stopped = false;
    this.#open();
  }

  /**
   * Moves the stream to another client (a renewed node certificate): the open
   * stream is cancelled and a new one resumes from the version held, so the
   * controller sees the new certificate now rather than at the next break.
   */
  setClient(client: ControllerClient): void {
    this.#client = client;
    if (this.#stopped) return;
    const call = this.#call;
    if (!call) return; // a reconnect is pending: it uses the new client
    this.#call = undefined;
    this.#connected = false;
    call.cancel();
    this.#open();
  }

  #open(): void {
    const call = this.#client.configStream();
    this.#call = call;
    // Parts of a message the last stream did not finish are of no use: the controller starts it over.
    this.state.abandon();
    call.write({
      hello: { node: this.#opts.node, version: this.state.version, proxyVersion: this.#opts.proxyVersion ?? '', addresses: this.#opts.addresses ?? [], maxMessageBytes: this.#client.maxResponseBytes },
    });
    call.on('data', (m: ConfigMessage) => {
      if (!this.#connected) {
        this.#connected = true;
        this.#backoff = this.#opts.backoffMs ?? 200;
        this.emit('connected');
      }
      if (m.heartbeat) {
        call.write({ heartbeat: { unixMs: Date.now() } });
        return;
      }
      this.#onConfig(call, m);
    });
    const broken = (reason: string): void => {
      if (this.#call !== call) return;
      this.#call = undefined;
      const was = this.#connected;
      this.#connected = false;
      if (was) this.emit('disconnected', reason);
      if (this.#stopped) return;
      this.#log.warn({ reason, retryInMs: this.#backoff }, 'config stream broke; keeping the last config');
      this.#timer = setTimeout(() => this.#open(), this.#backoff);
      this.#backoff = Math.min(this.#backoff * 2, this.#opts.maxBackoffMs ?? 10_000);
    };
    call.on('error', (err: grpc.ServiceError) => broken(err.details || err.message));
    call.on('end', () => broken('the controller ended the stream'));
  }

  #onConfig(call: grpc.ClientDuplexStream<NodeMessage, ConfigMessage>, m: ConfigMessage): void {
    const version = m.snapshot?.version ?? m.delta?.version ?? 0;
    const before = this.state.version;
    try {
      const staged = this.state.prepare(m);
      if (!staged) {
        const progress = this.state.receiving;
        if (progress) this.emit('part', progress);
        return;
      }
      const problem = this.#opts.validate?.(staged) ?? null;
      if (problem) throw new ConfigRejected(version, problem);
      const result = this.state.commit(staged);
      call.write({ ack: { version } });
      this.emit('update', result);
    } catch (err) {
      const reason = err instanceof Error ? err.message : String(err);
      this.#log.warn({ version, held: before, reason }, 'config version refused');
      call.write({ nack: { version, reason } });
      this.emit('nack', version, reason);
    }
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
    const call = this.#call;
    this.#call = undefined;
    this.#connected = false;
    call?.cancel();
  }
}
