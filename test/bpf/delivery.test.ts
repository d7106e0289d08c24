/**
 * The addon's two calls for delivery from the client's address (docs/
 * architecture.md, 'Delivery from the client address'), in a network
 * namespace of the test's own with one veth to another: netnsDelivery() puts
 * the sysctl, rules and local routes in place once (and takes them away),
 * transparentSocket() makes a socket there bound to an address the namespace
 * does not have, and a listener in it sees that address as its peer, with
 * replies coming back. Bad arguments are refused by name.
 */
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';

import { t } from 'tap';

import { abi, netnsDelivery, transparentSocket } from '../../src/bpf';
import { DELIVERY_ROUTING } from '../../src/node-proxy/upstream';
import { bpfTest } from '../helpers/bpf';

const NS = `nm-dlv-${process.pid}`;
const PATH = `/var/run/netns/${NS}`;
const POD = '198.18.251.2';
const CLIENT = '198.18.77.5';

function ip(args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8' });
}

bpfTest(t, 'delivery from the client address into a pod netns', async (t) => {
  ip(['netns', 'add', NS]);
  t.teardown(() => void execFileSync('ip', ['netns', 'del', NS]));
  ip(['-n', NS, 'link', 'set', 'lo', 'up']);
  ip(['-n', NS, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'peer0']);
  ip(['-n', NS, 'addr', 'add', `${POD}/24`, 'dev', 'eth0']);
  ip(['-n', NS, 'link', 'set', 'eth0', 'up']);
  ip(['-n', NS, 'link', 'set', 'peer0', 'up']);
  ip(['-n', NS, 'route', 'add', 'default', 'dev', 'eth0']);
  const rules = (): string => ip(['-n', NS, 'rule', 'show']) + ip(['-n', NS, '-6', 'rule', 'show']);
  const sysctl = (knob: string): string => execFileSync('ip', ['netns', 'exec', NS, 'cat', `/proc/sys/net/${knob}`], { encoding: 'utf8' }).trim();

  await t.test('netnsDelivery puts the rule, the table and the sysctl in place, once', async (t) => {
    await netnsDelivery(PATH, true, DELIVERY_ROUTING);
    await netnsDelivery(PATH, true, DELIVERY_ROUTING);
    const r = rules();
    t.equal(r.match(/fwmark 0xe4d\/0xfff lookup 15006/g)?.length, 2, 'one IPv4 and one IPv6 rule, not doubled by the second call');
    t.match(ip(['-n', NS, 'route', 'show', 'table', '15006', 'type', 'local']), /local default dev lo/, 'the table delivers every IPv4 address locally');
    t.match(ip(['-n', NS, '-6', 'route', 'show', 'table', '15006', 'type', 'local']), /local default dev lo/, 'and every IPv6 one');
    t.equal(sysctl('ipv4/tcp_fwmark_accept'), '1', 'accepted sockets take their SYN mark');
    t.equal(sysctl('ipv4/fwmark_reflect'), '1', "and the kernel's replies with no socket too (IPv4)");
    t.equal(sysctl('ipv6/fwmark_reflect'), '1', '(IPv6)');
  });

  await t.test('a transparent socket made there is seen from the client address, and replies come back', async (t) => {
    const nsfd = fs.openSync(PATH, 'r');
    t.teardown(() => fs.closeSync(nsfd));
    // The listener runs in the netns (a child); the test's socket is made there by the addon.
    const srv = spawn('ip', ['netns', 'exec', NS, process.execPath, '-e', serverScript()], { stdio: ['ignore', 'pipe', 'inherit'] });
    t.teardown(() => void srv.kill('SIGKILL'));
    const ownNetns = fs.readlinkSync('/proc/thread-self/ns/net');
    await new Promise<void>((resolve) => srv.stdout.once('data', () => resolve()));
    const fd = transparentSocket(nsfd, 4, CLIENT, abi.DELIVERY_MARK);
    const s = new net.Socket({ fd, readable: true, writable: true });
    s.connect({ host: POD, port: 7201 });
    const got = await new Promise<string>((resolve, reject) => {
      let b = '';
      s.on('data', (d: Buffer) => (b += d.toString()));
      s.on('end', () => resolve(b));
      s.on('error', reject);
      setTimeout(() => reject(new Error('no answer in 5 s: the reply did not come back')), 5_000).unref();
    });
    t.equal(got.trim(), CLIENT, 'the listener saw the client address');
    t.equal(s.localAddress, CLIENT, 'the socket is bound to it');
    s.destroy();
    t.equal(fs.readlinkSync('/proc/thread-self/ns/net'), ownNetns, 'and this thread is back in its own netns');
  });

  await t.test('a connect to a port nobody listens on is refused at once, not left to time out', async (t) => {
    const nsfd = fs.openSync(PATH, 'r');
    t.teardown(() => fs.closeSync(nsfd));
    const s = new net.Socket({ fd: transparentSocket(nsfd, 4, CLIENT, abi.DELIVERY_MARK), readable: true, writable: true });
    s.connect({ host: POD, port: 7202 });
    const started = Date.now();
    const code = await new Promise<string>((resolve) => {
      s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
      s.once('connect', () => resolve('connected'));
      setTimeout(() => resolve('no answer within 3 s'), 3_000).unref();
    });
    s.destroy();
    t.equal(code, 'ECONNREFUSED', `the RST came back to the socket (${Date.now() - started} ms)`);
  });

  await t.test('bad arguments are refused by name', async (t) => {
    const nsfd = fs.openSync(PATH, 'r');
    t.teardown(() => fs.closeSync(nsfd));
    t.throws(() => transparentSocket(nsfd, 4, 'not-an-address', abi.DELIVERY_MARK), /not-an-address is not an IPv4 address/);
    t.throws(() => transparentSocket(nsfd, 6, CLIENT, abi.DELIVERY_MARK), /is not an IPv6 address/);
    t.throws(() => transparentSocket(nsfd, 5 as 4, CLIENT, abi.DELIVERY_MARK), /family must be 4 or 6/);
    await t.rejects(netnsDelivery('/var/run/netns/nm-no-such-netns', true, DELIVERY_ROUTING), /open netns in \/var\/run\/netns\/nm-no-such-netns/);
  });

  await t.test('netnsDelivery(off) takes the rules away again', async (t) => {
    await netnsDelivery(PATH, false, DELIVERY_ROUTING);
    await netnsDelivery(PATH, false, DELIVERY_ROUTING);
    t.notMatch(rules(), /lookup 15006/, 'no rule left, and a second removal is no error');
    t.equal(ip(['-n', NS, 'route', 'show', 'table', '15006']).trim(), '', 'nor a route in the table');
  });
});

function serverScript(): string {
  return `require('net').createServer((s) => { s.end(s.remoteAddress.replace('::ffff:', '') + '\\n'); }).listen(7201, '${POD}', () => console.log('listening'));`;
}
