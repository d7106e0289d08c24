// The api's (src/api/identity.ts): revocation lists and tunnels compare serials without the CA.
export { normalizeSerial } from '../../api/identity';
