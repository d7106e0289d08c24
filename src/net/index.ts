/**
 * Bounds every listener in the mesh shares, whoever owns the listener (node
 * proxy or controller): admission per peer and in total, TLS handshakes in
 * flight, rate budgets, the rate-limited refusal log, the descriptor limit.
 * Each side keeps its own defaults, flags, metric names and reasons.
 */
export { AdmissionTable, peerKey, type Admission } from './admission';
export { HandshakeTable, type HandshakeLimits } from './handshakes';
export { openFileLimit, readOpenFileLimit } from './open-files';
export { RateBudget } from './rate-budget';
export { LineBudget, RefusalLog, type RefusalCounter, type RefusalLogOptions } from './refusal-log';
