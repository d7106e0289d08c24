/** The typed face of the libbpf addon. Nothing outside src/bpf imports the addon. */
export { BpfError } from './errors';
export { bytes, scalar, struct, type Codec, type FieldLayout, type FieldType, type StructOf } from './codec';
export { BpfObject, loadObject, openObject, type GlobalValue, type LoadOptions, type OpenOptions } from './object';
export { BpfMap, sumValues, type MapCodecs, type MapInfo, type UpdateFlag } from './map';
export { Link, type LinkInfo } from './link';
export { RingBuffer, type RingBufferOptions } from './ringbuf';
export {
  cgroupId,
  ensurePinDir,
  findBpffs,
  findCgroup2Mount,
  isBpffs,
  isCgroup2,
  mallocTrim,
  mountBpffs,
  netnsCookie,
  netnsDelivery,
  parseMounts,
  probeFeatures,
  kickReceive,
  recvInto,
  socketCookie,
  socketFd,
  tcpQueued,
  transparentSocket,
  type DeliveryRouting,
  type FeatureReport,
  type MountEntry,
} from './system';
export * as abi from './abi';
