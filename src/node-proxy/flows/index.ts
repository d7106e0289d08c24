export { FlowTable, matchesFlow, type Flow, type FlowEvent, type FlowFilter, type FlowVerdict, type RequestRecord } from './flow-table';
export { ConnectionRecorder, OpenConnection, type AccessLogLevel, type ConnectionFacts, type RecorderOptions, type RefusedFacts } from './recorder';
export { formatFlow } from './format';
