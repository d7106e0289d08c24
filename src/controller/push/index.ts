export { ConfigHub, type NodeChannel, type PushEvents } from './hub';
