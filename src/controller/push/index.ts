export { ConfigHub, type NodeChannel, type OutgoingMessage, type PushEvents } from './hub';
export { NodeStreamRecords, STREAM_END_REASONS, type NodeStreamRecord, type StreamEndReason } from './node-streams';
