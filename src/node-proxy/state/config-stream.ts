/**
 * The node's side of the config stream: say hello with the version held,
 * apply what arrives to ConfigState, ACK or NACK each version, reconnect with
 * backoff when the stream breaks (keeping the last good config meanwhile),
 * and resume from the version held.
 */
import { EventEmitter } from 'node:events';

import type * as grpc from '@grpc/grpc-js';

import { clip, LIMITS } from '../../api/limits';
import type { ConfigMessage, NodeMessage } from '../../api/proto';
import type { ControllerClient } from '../../controller/client';
import { silentLogger, type Logger } from '../../log';
import { LineBudget } from '../../net';
import { Backoff } from './backoff';
import type { ControllerLink } from './controller-link';
import { ConfigRejected, ConfigState, type ApplyResult, type Progress, type Staged } from './config-state';

export interface ConfigStreamOptions {
  client: ControllerClient;
  node: string;
  proxyVersion?: string;
  /** Where other nodes reach this node's proxy (sent in the hello). */
  addresses?: string[];
  /** The data path's mode, for the controller's node list (sent in the hello). */
  failMode?: 'fail-closed' | 'fail-open';
  state?: ConfigState;
  log?: Logger;
  /** Reconnect delays: drawn from [base/2, base], base doubling from backoffMs (200) to maxBackoffMs (2 s). */
  backoffMs?: number;
  maxBackoffMs?: number;
  /** In [0, 1), for the jitter; tests fix it. */
  random?: () => number;
  /** The proxy's own check of a version before it is taken: a reason refuses it. */
  validate?: (staged: Staged) => string | null;
}

/** How often a stream that keeps failing may write its warning. */
const RECONNECT_LOG_INTERVAL_MS = 30_000;

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
  readonly #backoff: Backoff;
  #timer: NodeJS.Timeout | undefined;
  #connected = false;
  /** Streams in a row that ended before delivering a config. */
  #failures = 0;
  #lastError = '';
  #lastErrorAt = 0;
  #retryAt = 0;
  /** Why the previous stream ended, for the next hello ('' when it ended on purpose). */
  #endedWith = '';
  /** A failing stream is retried many times: its warning is written once, then at most once per interval with the count held back. */
  #lines = new LineBudget(1, RECONNECT_LOG_INTERVAL_MS);

  constructor(opts: ConfigStreamOptions) {
    super();
    this.#opts = opts;
    this.#client = opts.client;
    this.state = opts.state ?? new ConfigState();
    this.#log = (opts.log ?? silentLogger()).child({ component: 'config-stream', node: opts.node });
    this.#backoff = new Backoff({ initialMs: opts.backoffMs, maxMs: opts.maxBackoffMs, random: opts.random });
    // A version taken or refused means the stream works end to end; its first byte alone does not (a snapshot can fail after it).
    this.on('update', () => this.#delivered());
    this.on('nack', () => this.#delivered());
  }

  get connected(): boolean {
    return this.#connected;
  }

  /** The link to the controller: connected, failures in a row, the last error and when, the next attempt. */
  get link(): ControllerLink {
    return { connected: this.#connected, failures: this.#failures, lastError: this.#lastError, lastErrorUnixMs: this.#lastErrorAt, retryAtUnixMs: this.#retryAt };
  }

  #delivered(): void {
    this.#backoff.reset();
    if (this.#failures === 0) return;
    this.#log.info({ failures: this.#failures, lastError: this.#lastError }, 'config stream delivers again');
    this.#failures = 0;
    this.#lines = new LineBudget(1, RECONNECT_LOG_INTERVAL_MS);
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
    this.#endedWith = '';
    call.cancel();
    this.#open();
  }

  #open(): void {
    this.#retryAt = 0;
    const call = this.#client.configStream();
    this.#call = call;
    // Parts of a message the last stream did not finish are of no use: the controller starts it over.
    this.state.abandon();
    call.write({
      hello: {
        node: this.#opts.node,
        version: this.state.version,
        proxyVersion: this.#opts.proxyVersion ?? '',
        addresses: this.#opts.addresses ?? [],
        maxMessageBytes: this.#client.maxResponseBytes,
        lastError: this.#endedWith,
        failMode: this.#opts.failMode ?? '',
      },
    });
    call.on('data', (m: ConfigMessage) => {
      if (!this.#connected) {
        this.#connected = true;
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
      const now = Date.now();
      this.#failures++;
      this.#lastError = clip(reason, LIMITS.maxNodeTextChars);
      this.#lastErrorAt = now;
      this.#endedWith = this.#lastError;
      const delay = this.#backoff.next();
      this.#retryAt = now + delay;
      const line = this.#lines.take('broke', now);
      const fields = { reason: this.#lastError, failures: this.#failures, retryInMs: delay, held: this.state.version };
      if (line.write) this.#log.warn({ ...fields, ...(line.dropped ? { heldBack: line.dropped } : {}) }, 'config stream broke; keeping the last config');
      else this.#log.debug(fields, 'config stream broke again');
      this.#timer = setTimeout(() => this.#open(), delay);
    };
    // err.message carries the code: "14 UNAVAILABLE: …", "8 RESOURCE_EXHAUSTED: Received message larger than max …".
    call.on('error', (err: grpc.ServiceError) => broken(err.message || err.details));
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
    this.#retryAt = 0;
    const call = this.#call;
    this.#call = undefined;
    this.#connected = false;
    call?.cancel();
  }
}
