export { FlowTable, matchesFlow, type Flow, type FlowEvent, type FlowFilter, type FlowVerdict } from './flow-table';
export { formatFlow } from './format';
