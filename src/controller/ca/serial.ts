/**
 * One spelling of a certificate serial number for every comparison (the
 * revocation list, the store, TLS peers): node:crypto prints uppercase hex,
 * the CA lowercase, and either may drop a leading zero.
 */
export function normalizeSerial(serial: string): string {
  return serial.toLowerCase().replace(/^0+(?=.)/, '');
}
