export * from './ca';
export * from './serial';
