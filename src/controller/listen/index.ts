export * from './admission';
export * from './grpc-listener';
export * from './limits';
export * from './refusals';
