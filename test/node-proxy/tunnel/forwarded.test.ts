/** The `Forwarded: for=` header a CONNECT carries the client's address in: format and strict parse, hostile values included. */
import { t } from 'tap';

import { FORWARDED_MAX_LENGTH, formatForwarded, parseForwarded } from '../../../src/node-proxy/tunnel';

t.test('format: IPv4 bare, IPv6 in brackets and quotes, and it parses back', async (t) => {
  const cases: [string, string][] = [
    ['198.18.1.2', 'for=198.18.1.2'],
    ['2001:2::1:2', 'for="[2001:2::1:2]"'],
    ['::1', 'for="[::1]"'],
  ];
  for (const [ip, want] of cases) {
    t.equal(formatForwarded(ip), want, ip);
    t.same(parseForwarded(want), { ok: true, address: ip }, `${want} round-trips`);
  }
  for (const bad of ['', 'example.com', '198.18.1.2:80', 'fe80::1%eth0', '[2001:2::1]', 'unknown']) {
    t.throws(() => formatForwarded(bad), /is not an IP address/, `refuses ${JSON.stringify(bad)}`);
  }
});

t.test('parse accepts the RFC 7239 spellings of one address', async (t) => {
  const cases: [string, string][] = [
    ['for=192.0.2.60', '192.0.2.60'],
    ['FOR=192.0.2.60', '192.0.2.60'],
    ['for="192.0.2.60"', '192.0.2.60'],
    ['for="[2001:db8:cafe::17]"', '2001:db8:cafe::17'],
    ['for="[2001:DB8:CAFE::17]"', '2001:db8:cafe::17'],
    ['for="[2001:db8:cafe:0:0:0:0:17]"', '2001:db8:cafe::17'],
    // IPv4-mapped stays IPv6 here; the inbound check looks it up as the IPv4 workload.
    ['for="[::ffff:198.18.1.2]"', '::ffff:198.18.1.2'],
    ['for="[0000:0000:0000:0000:0000:ffff:255.255.255.255]"', '::ffff:255.255.255.255'],
  ];
  for (const [value, address] of cases) t.same(parseForwarded(value), { ok: true, address }, value);
});

t.test('parse refuses anything but one address, naming the problem', async (t) => {
  const cases: [unknown, RegExp][] = [
    [undefined, /no Forwarded header/],
    [['for=192.0.2.1', 'for=192.0.2.2'], /2 Forwarded headers/],
    ['for=192.0.2.1, for=192.0.2.2', /more than one hop/],
    ['for=192.0.2.1,for=192.0.2.2', /more than one hop/],
    ['for=192.0.2.1;proto=https', /more than one parameter/],
    ['for=192.0.2.1;for=192.0.2.2', /more than one parameter/],
    ['by=192.0.2.1', /no for= parameter/],
    ['192.0.2.1', /no for= parameter/],
    ['', /no for= parameter/],
    ['for=unknown', /for=unknown/],
    ['for="unknown"', /for=unknown/],
    ['for=_hidden', /obfuscated/],
    ['for=2001:db8::1', /must be written for="\[address\]"/],
    ['for=[2001:db8::1]', /must be written for="\[address\]"/],
    ['for="[2001:db8::1"', /must be written for="\[address\]"/],
    ['for="[2001:db8::zz]"', /is not an IPv6 address/],
    ['for="[fe80::1%eth0]"', /is not an IPv6 address/],
    ['for="[192.0.2.1]"', /is not an IPv6 address/],
    ['for="192.0.2.1:4711"', /not an IP address \(no port/],
    ['for="[2001:db8::1]:4711"', /must be written for="\[address\]"/],
    ['for=192.0.2.256', /not an IP address/],
    ['for=example.com', /not an IP address/],
    ['for=', /not an IP address/],
    ['for="', /quoted for= value is malformed/],
    ['for="192.0.2.1', /quoted for= value is malformed/],
    ['for="192.0.2.1"x"', /quoted for= value is malformed/],
    ['for="192.0.\\2.1"', /quoted for= value is malformed/],
    ['for= 192.0.2.1', /white space/],
    ['for=192.0.2.1\t', /white space/],
    [`for=${'1'.repeat(FORWARDED_MAX_LENGTH)}`, new RegExp(`of ${FORWARDED_MAX_LENGTH + 4} bytes, over ${FORWARDED_MAX_LENGTH}`)],
    [`for="[${'0:'.repeat(1000)}1]"`, /bytes, over/],
    [42, /no Forwarded header/],
  ];
  for (const [value, problem] of cases) {
    const r = parseForwarded(value);
    t.equal(r.ok, false, `${JSON.stringify(value)?.slice(0, 60)} is refused`);
    if (!r.ok) t.match(r.problem, problem, `${JSON.stringify(value)?.slice(0, 60)}: ${r.problem.slice(0, 120)}`);
  }
});
