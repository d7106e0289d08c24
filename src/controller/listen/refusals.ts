/**
 * Every connection a listener refuses or cuts is counted, and logged at most
 * once per listener and reason per interval (a flood must not become a log
 * flood): the line carries how many were folded into it.
 */
import type { Logger } from '../../log';
import { RefusalLog, type RefusalCounter as Counter } from '../../net';
import type { Refusal } from './admission';

export type ListenerName = 'grpc' | 'metrics';

export type RefusalCounter = Counter<ListenerName, Refusal>;

const MESSAGES: Record<Refusal, string> = {
  total_limit: 'connection refused: the listener holds its maximum of connections (--max-connections)',
  peer_limit: 'connection refused: this peer holds its maximum of connections (--max-connections-per-peer)',
  handshake_limit: 'connection refused: too many TLS handshakes in progress, in total or from this peer (--max-handshakes, --max-handshakes-per-peer)',
  handshake_timeout: 'connection closed: no TLS handshake within --handshake-timeout',
  handshake_failed: 'connection closed: the TLS handshake failed',
  not_h2: 'connection closed: the client did not negotiate HTTP/2 (ALPN h2)',
  ping_flood: 'session closed: PING frames above the budget',
  settings_flood: 'session closed: SETTINGS frames above the budget',
  reset_flood: 'session closed: streams reset above the budget (rapid reset)',
  request_timeout: 'connection closed: the request did not arrive within --metrics-request-timeout',
  idle_timeout: 'connection closed: idle past the metrics listener idle timeout',
  bad_request: 'connection closed: not a well-formed HTTP request',
};

export class Refusals {
  readonly #log: RefusalLog<ListenerName, Refusal>;

  constructor(log: Logger, counter: RefusalCounter, intervalMs: number) {
    this.#log = new RefusalLog({ counter, log, linesPerInterval: 1, intervalMs });
  }

  /** Counts one refusal and logs it unless one like it was logged within the interval. */
  note(listener: ListenerName, reason: Refusal, peer: string, detail?: string): void {
    this.#log.note(listener, reason, (log, folded) => log.warn({ listener, reason, peer, ...(detail ? { detail } : {}), foldedSinceLastLine: folded }, MESSAGES[reason]));
  }
}
