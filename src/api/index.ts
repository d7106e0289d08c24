export * from './kinds';
export * from './selectors';
export * from './validate';
