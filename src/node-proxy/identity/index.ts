export * from './csr';
