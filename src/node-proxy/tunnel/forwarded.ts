/**
 * The client's address on a CONNECT, as an RFC 7239 `Forwarded` header with
 * one `for=` pair: the source node's proxy knows the pod's address, the
 * destination's proxy sees only the other node. ztunnel carries it the same
 * way (and believes it only from a peer it trusts); whether the peer may
 * claim that address is the inbound side's decision, not this module's.
 *
 * The parse is strict because the sender is always a nodemesh proxy: one
 * element, one pair, an IP literal (IPv6 in brackets and quotes), no port,
 * no obfuscated or `unknown` node. Anything else is refused rather than
 * ignored: evaluating a DENY `ipBlocks` rule without the address would let
 * the connection through.
 */
import * as net from 'node:net';

/** The request header (HTTP/2 names are lower case). */
export const FORWARDED_HEADER = 'forwarded';

/** Longer than any `for="[IPv6]"` there is (53 bytes, fully written out and IPv4-mapped); bounds what a peer can make us read. */
export const FORWARDED_MAX_LENGTH = 64;

export type ForwardedParse = { ok: true; address: string } | { ok: false; problem: string };

/** `for=192.0.2.1` or `for="[2001:db8::1]"`. Throws on anything that is not an IP address (a caller's bug). */
export function formatForwarded(address: string): string {
  const family = net.isIP(address);
  if (family === 0 || address.includes('%')) throw new TypeError(`forwarded: ${JSON.stringify(address)} is not an IP address`);
  return family === 6 ? `for="[${address}]"` : `for=${address}`;
}

/** The one client address in a `Forwarded` value (IPv6 in the kernel's spelling), or why it is not acceptable. */
export function parseForwarded(value: unknown): ForwardedParse {
  if (Array.isArray(value)) return { ok: false, problem: `${value.length} Forwarded headers, expected one` };
  if (typeof value !== 'string') return { ok: false, problem: 'no Forwarded header' };
  if (value.length > FORWARDED_MAX_LENGTH) return { ok: false, problem: `a Forwarded header of ${value.length} bytes, over ${FORWARDED_MAX_LENGTH}` };
  const show = JSON.stringify(value);
  // Several proxies (or a repeated header, which Node joins with ", ") would name several addresses: which one is the client is the sender's guess.
  if (value.includes(',')) return { ok: false, problem: `Forwarded ${show} names more than one hop, expected exactly one for=` };
  if (value.includes(';')) return { ok: false, problem: `Forwarded ${show} has more than one parameter, expected only for=` };
  if (/\s/.test(value)) return { ok: false, problem: `Forwarded ${show} holds white space (RFC 7239 allows none in a pair)` };
  const eq = value.indexOf('=');
  if (eq === -1 || value.slice(0, eq).toLowerCase() !== 'for') return { ok: false, problem: `Forwarded ${show} has no for= parameter` };
  let node = value.slice(eq + 1);
  const quoted = node.startsWith('"');
  if (quoted) {
    if (node.length < 2 || !node.endsWith('"') || node.slice(1, -1).includes('"') || node.includes('\\')) return { ok: false, problem: `Forwarded ${show}: the quoted for= value is malformed` };
    node = node.slice(1, -1);
  }
  if (node.startsWith('[')) {
    // RFC 7239 §6: an IPv6 node is bracketed, and brackets need quotes.
    if (!quoted || !node.endsWith(']')) return { ok: false, problem: `Forwarded ${show}: an IPv6 address must be written for="[address]"` };
    const v6 = node.slice(1, -1);
    if (!net.isIPv6(v6) || v6.includes('%')) return { ok: false, problem: `Forwarded ${show}: ${JSON.stringify(v6)} is not an IPv6 address` };
    // The kernel's spelling (RFC 5952), which is how the mesh view and the policies know the address.
    return { ok: true, address: new net.SocketAddress({ address: v6, family: 'ipv6' }).address };
  }
  if (net.isIPv4(node)) return { ok: true, address: node };
  if (node.toLowerCase() === 'unknown') return { ok: false, problem: `Forwarded ${show}: the sender does not know the client (for=unknown)` };
  if (node.startsWith('_')) return { ok: false, problem: `Forwarded ${show}: an obfuscated node names no address` };
  if (net.isIPv6(node)) return { ok: false, problem: `Forwarded ${show}: an IPv6 address must be written for="[address]"` };
  return { ok: false, problem: `Forwarded ${show}: the for= value is not an IP address (no port, no name)` };
}
