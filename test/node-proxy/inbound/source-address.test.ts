/** Whom a tunnel peer may claim as the client: a workload with the peer's identity, on the node the tunnel comes from. */
import { t } from 'tap';

import { checkClaimedSource, type SourceWorkload } from '../../../src/node-proxy/inbound';

const ID_A = 'spiffe://cluster.local/ns/default/sa/a';
const ID_B = 'spiffe://cluster.local/ns/default/sa/b';
// Pod a1 runs on n1, a2 (same service account) on n2, b1 on n1.
const WORKLOADS: Record<string, SourceWorkload> = {
  '198.18.1.10': { identity: ID_A, node: 'n1', nodeAddresses: ['198.18.0.1', '2001:2::1'] },
  '2001:2:1::10': { identity: ID_A, node: 'n1', nodeAddresses: ['198.18.0.1', '2001:2::1'] },
  '198.18.2.10': { identity: ID_A, node: 'n2', nodeAddresses: ['198.18.0.2'] },
  '198.18.1.11': { identity: ID_B, node: 'n1', nodeAddresses: ['198.18.0.1'] },
};
const at = (ip: string): SourceWorkload | undefined => WORKLOADS[ip];

t.test('believed: the peer speaks for its own pod, from its own node', async (t) => {
  const cases: [string, string, string][] = [
    ['198.18.0.1', '198.18.1.10', '198.18.1.10'],
    ['::ffff:198.18.0.1', '198.18.1.10', '198.18.1.10'],
    ['198.18.0.1', '::ffff:198.18.1.10', '198.18.1.10'],
    ['198.18.0.1', '2001:2:1::10', '2001:2:1::10'],
    ['2001:2::1', '198.18.1.10', '198.18.1.10'],
  ];
  for (const [remoteAddress, claimedSource, ip] of cases) {
    t.same(checkClaimedSource({ principal: ID_A, remoteAddress, claimedSource }, at), { ok: true, ip }, `${claimedSource} from ${remoteAddress}`);
  }
});

t.test('refused: no claim, an address outside the mesh, another identity, another node', async (t) => {
  const cases: [string, string, string | undefined, string, RegExp][] = [
    [ID_A, '198.18.0.1', undefined, 'no-source-address', /sent no Forwarded/],
    [ID_A, '198.18.0.1', '203.0.113.9', 'source-address-unverified', /no workload's address/],
    [ID_A, '198.18.0.1', '198.18.1.11', 'source-address-unverified', /belongs to spiffe:\/\/cluster\.local\/ns\/default\/sa\/b/],
    // The same service account on another node: a node broken into cannot speak for n2's pod.
    [ID_A, '198.18.0.1', '198.18.2.10', 'source-address-unverified', /of node n2 \(198\.18\.0\.2\), but the tunnel comes from 198\.18\.0\.1/],
    [ID_B, '198.18.0.2', '198.18.1.11', 'source-address-unverified', /of node n1 .* comes from 198\.18\.0\.2/],
  ];
  for (const [principal, remoteAddress, claimedSource, reason, detail] of cases) {
    const r = checkClaimedSource({ principal, remoteAddress, claimedSource }, at);
    t.match(r, { ok: false, reason, detail }, `${principal.split('/').pop()} claims ${String(claimedSource)} from ${remoteAddress}`);
  }
});
