/**
 * IP addresses and CIDR blocks as numbers, for matching without I/O: the
 * controller's validation of ipBlocks, the policy engine and the proxy's dial
 * guard use the same parser, so they can never disagree on what an address
 * or a block is (a block validation admits is one the proxy can match). An IPv4-mapped IPv6
 * address (::ffff:a.b.c.d) is IPv4 here, in addresses and in blocks.
 */
export interface Ip {
  v6: boolean;
  n: bigint;
}

export interface Cidr {
  v6: boolean;
  net: bigint;
  mask: bigint;
}

/** IPv4 or IPv6 (zone dropped); an IPv4-mapped IPv6 address becomes IPv4. */
export function parseIp(text: string): Ip | undefined {
  return parseAddress(text)?.ip;
}

export function parseAddress(text: string): { ip: Ip; mapped: boolean } | undefined {
  const pct = text.indexOf('%');
  const s = pct >= 0 ? text.slice(0, pct) : text;
  if (!s.includes(':')) {
    const v4 = parseV4(s);
    return v4 === undefined ? undefined : { ip: { v6: false, n: BigInt(v4) }, mapped: false };
  }
  const n = parseV6(s);
  if (n === undefined) return undefined;
  if (n >> 32n === 0xffffn) return { ip: { v6: false, n: n & 0xffffffffn }, mapped: true };
  return { ip: { v6: true, n }, mapped: false };
}

function parseV4(s: string): number | undefined {
  const parts = s.split('.');
  if (parts.length !== 4) return undefined;
  let n = 0;
  for (const p of parts) {
    if (!/^[0-9]{1,3}$/.test(p)) return undefined;
    const b = Number(p);
    if (b > 255) return undefined;
    n = n * 256 + b;
  }
  return n;
}

function parseV6(s: string): bigint | undefined {
  const gap = s.indexOf('::');
  if (gap >= 0 && s.indexOf('::', gap + 1) >= 0) return undefined;
  const groups = (text: string, v4Last: boolean): number[] | undefined => {
    if (text === '') return [];
    const parts = text.split(':');
    const out: number[] = [];
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i]!;
      if (v4Last && i === parts.length - 1 && p.includes('.')) {
        const v4 = parseV4(p);
        if (v4 === undefined) return undefined;
        out.push(v4 >>> 16, v4 & 0xffff);
      } else if (/^[0-9a-fA-F]{1,4}$/.test(p)) out.push(parseInt(p, 16));
      else return undefined;
    }
    return out;
  };
  let all: number[];
  if (gap < 0) {
    const g = groups(s, true);
    if (!g || g.length !== 8) return undefined;
    all = g;
  } else {
    const head = groups(s.slice(0, gap), false);
    const tail = groups(s.slice(gap + 2), true);
    if (!head || !tail || head.length + tail.length > 7) return undefined;
    all = [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
  }
  let n = 0n;
  for (const g of all) n = (n << 16n) | BigInt(g);
  return n;
}

/** `10.0.0.0/8`, `fd00::/64`, or one address; host bits are masked off. A mapped block (`::ffff:10.0.0.0/104`) is IPv4. */
export function parseCidr(text: string): Cidr | undefined {
  const slash = text.indexOf('/');
  const addr = parseAddress(slash < 0 ? text : text.slice(0, slash));
  if (!addr) return undefined;
  const width = addr.ip.v6 ? 128 : 32;
  let bits = width;
  if (slash >= 0) {
    const len = text.slice(slash + 1);
    if (!/^[0-9]{1,3}$/.test(len)) return undefined;
    bits = Number(len) - (addr.mapped ? 96 : 0);
    // A mapped block shorter than /96 also spans non-mapped IPv6: not supported, matches nothing.
    if (bits < 0 || bits > width) return undefined;
  }
  const mask = bits === 0 ? 0n : ((1n << BigInt(bits)) - 1n) << BigInt(width - bits);
  return { v6: addr.ip.v6, net: addr.ip.n & mask, mask };
}

/** Whether `ip` falls in `cidr` (same family). */
export function cidrContains(cidr: Cidr, ip: Ip): boolean {
  return cidr.v6 === ip.v6 && (ip.n & cidr.mask) === cidr.net;
}

/** host:port as URLs and gRPC spell it: an IPv6 host in brackets. */
export function formatHostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
