/**
 * How each node's config streams went: how many it opened, how the last one
 * ended, and the last error with its time. One record per node that
 * authenticated with a node certificate (names come from certificates this
 * controller issued, never from what a peer says), text clipped, so the table
 * grows with the cluster and nothing else.
 */
import { clip, LIMITS } from '../../api/limits';

/**
 * Why a node stream ended: a fixed set, so a metric label never carries
 * free text (the text goes to the node's record and the log).
 */
export const STREAM_END_REASONS = [
  /** The node half-closed the stream (OK). */
  'node-ended',
  /** The node cancelled it or its connection went: it says why in its next hello. */
  'node-cancelled',
  /** A newer stream of the same node took over. */
  'replaced',
  'revoked',
  /** Its config cannot be sent within its receive limit (an item larger than a part may be). */
  'too-large',
  'hello-timeout',
  /** The first message was no hello, named another node or carried bad addresses. */
  'bad-hello',
  /** The caller has no valid node certificate. */
  'not-a-node',
  'controller-stopping',
  /** The controller closed it for a reason not named here. */
  'controller-closed',
  'send-failed',
  /** The stream reported an error the node caused (a message it sent that gRPC refused). */
  'node-error',
  /** A controller bug: logged with its stack. */
  'internal',
] as const;
export type StreamEndReason = (typeof STREAM_END_REASONS)[number];

export interface NodeStreamRecord {
  /** Streams authenticated as this node since the controller started, refused ones included. */
  streamsOpened: number;
  /** '' when no stream of it has failed. */
  lastError: string;
  lastErrorUnixMs: number;
  /** `reported`: the node's next hello already spoke of it. */
  lastEnd?: { code: string; reason: StreamEndReason; unixMs: number; reported?: boolean };
}

/** Whether an end is worth showing as the node's last error. */
function isFailure(code: string, reason: StreamEndReason): boolean {
  // A node's cancel is often deliberate (a renewed certificate, a stop); when it was not, its next hello says why.
  return code !== 'OK' && reason !== 'node-cancelled';
}

export class NodeStreamRecords {
  readonly #byNode = new Map<string, NodeStreamRecord>();

  #record(node: string): NodeStreamRecord {
    let r = this.#byNode.get(node);
    if (!r) {
      r = { streamsOpened: 0, lastError: '', lastErrorUnixMs: 0 };
      this.#byNode.set(node, r);
    }
    return r;
  }

  /** A stream authenticated as `node` (before its hello is checked). */
  opened(node: string): void {
    this.#record(node).streamsOpened++;
  }

  /** `code`: the gRPC status name the stream ended with. */
  ended(node: string, code: string, reason: StreamEndReason, details: string, now = Date.now()): void {
    const r = this.#record(node);
    r.lastEnd = { code, reason, unixMs: now };
    if (isFailure(code, reason)) {
      r.lastError = clip(`${code}: ${details}`, LIMITS.maxNodeTextChars);
      r.lastErrorUnixMs = now;
    }
  }

  /**
   * What the node said in its hello about why its previous stream ended.
   * Its time is when the controller saw that stream end, when it did (the
   * node's own refusal of a message reaches the controller as a bare cancel);
   * an end the controller already recorded as an error keeps its own words.
   */
  reported(node: string, lastError: string, now = Date.now()): void {
    if (!lastError) return;
    const r = this.#record(node);
    const end = r.lastEnd;
    if (end && !end.reported && r.lastError && r.lastErrorUnixMs === end.unixMs) {
      end.reported = true;
      return;
    }
    r.lastError = clip(`node: ${lastError}`, LIMITS.maxNodeTextChars);
    r.lastErrorUnixMs = end && !end.reported ? end.unixMs : now;
    if (end) end.reported = true;
  }

  get(node: string): Readonly<NodeStreamRecord> | undefined {
    return this.#byNode.get(node);
  }

  nodes(): string[] {
    return [...this.#byNode.keys()];
  }
}
