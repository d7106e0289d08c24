/**
 * HAProxy as the L4 benchmark's peers (see docs/architecture.md, 'Performance
 * targets'): one plaintext hop, and the pair that does nodemesh's work across
 * nodes: the instance in the client's node originates TLS 1.3 with a client
 * certificate, the one in the server's node verifies it, terminates TLS and
 * forwards plaintext to the pod. Every instance runs `nbthread 1` in mode tcp
 * in its node's network namespace. The throwaway CA and certificates are
 * ECDSA P-256 like the mesh's own, made with the openssl CLI.
 */
import { execFileSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { labSpawn, type LabState } from '../src/lab';
import { listeningPorts, until } from './common';

/** The server name the terminating instance's certificate carries and the originating one checks. */
const SERVER_NAME = 'haproxy-terminate.bench.invalid';

export interface BenchCerts {
  ca: string;
  /** Certificate and key in one PEM, as HAProxy's `crt` takes them. */
  server: string;
  client: string;
}

function openssl(dir: string, args: string[]): void {
  try {
    execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    throw new Error(`haproxy peers: openssl ${args.slice(0, 2).join(' ')} failed: ${(err as { stderr?: Buffer }).stderr?.toString().trim() ?? (err as Error).message}`);
  }
}

/** A CA, a server certificate for SERVER_NAME and a client certificate, under `dir` (the caller removes it). */
export function makeCerts(dir: string): BenchCerts {
  const key = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  openssl(dir, ['req', '-x509', ...key, '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '1', '-subj', '/CN=nodemesh bench CA', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign']);
  const leaf = (name: string, cn: string, ext: string): string => {
    openssl(dir, ['req', ...key, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`]);
    fs.writeFileSync(path.join(dir, `${name}.ext`), ext);
    openssl(dir, ['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '1', '-out', `${name}.crt`, '-extfile', `${name}.ext`]);
    const pem = path.join(dir, `${name}.pem`);
    fs.writeFileSync(pem, fs.readFileSync(path.join(dir, `${name}.crt`), 'utf8') + fs.readFileSync(path.join(dir, `${name}.key`), 'utf8'), { mode: 0o600 });
    return pem;
  };
  return {
    ca: path.join(dir, 'ca.crt'),
    server: leaf('server', SERVER_NAME, `subjectAltName=DNS:${SERVER_NAME}\nextendedKeyUsage=serverAuth\n`),
    client: leaf('client', 'haproxy-originate', 'extendedKeyUsage=clientAuth\n'),
  };
}

/** One forwarded port: where HAProxy listens, and where it sends. */
export interface Forward {
  name: string;
  bind: string;
  port: number;
  to: string;
  toPort: number;
}

const GLOBAL =
  'global\n  nbthread 1\n  maxconn 4000\n  ssl-default-bind-options ssl-min-ver TLSv1.3\n  ssl-default-server-options ssl-min-ver TLSv1.3\n' +
  'defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n';

/** Plaintext in, plaintext out: the one-hop peer. */
export function plainConfig(forwards: readonly Forward[]): string {
  return GLOBAL + forwards.map((f) => `listen ${f.name}\n  bind ${f.bind}:${f.port}\n  server s ${f.to}:${f.toPort}\n`).join('');
}

/** Plaintext in, TLS 1.3 out with the client certificate, the server's certificate verified against the CA and its name. */
export function originateConfig(forwards: readonly Forward[], certs: BenchCerts): string {
  return (
    GLOBAL +
    forwards
      .map((f) => `listen ${f.name}\n  bind ${f.bind}:${f.port}\n  server s ${f.to}:${f.toPort} ssl crt ${certs.client} ca-file ${certs.ca} verify required verifyhost ${SERVER_NAME} sni str(${SERVER_NAME})\n`)
      .join('')
  );
}

/** TLS 1.3 in, a client certificate from the CA required, plaintext out. */
export function terminateConfig(forwards: readonly Forward[], certs: BenchCerts): string {
  return GLOBAL + forwards.map((f) => `listen ${f.name}\n  bind ${f.bind}:${f.port} ssl crt ${certs.server} ca-file ${certs.ca} verify required\n  server s ${f.to}:${f.toPort}\n`).join('');
}

export interface RunningHaproxy {
  name: string;
  child: ChildProcess;
  pid: number;
}

/**
 * Starts `haproxy -db` with `config` in lab node `node`; resolves once it
 * listens on every port of `forwards` (within 10 s), else says why with its output.
 */
export async function startHaproxy(lab: LabState, node: string, name: string, config: string, forwards: readonly Forward[], dir: string): Promise<RunningHaproxy> {
  const cfg = path.join(dir, `${name}.cfg`);
  fs.writeFileSync(cfg, config);
  execFileSync('haproxy', ['-c', '-q', '-f', cfg], { stdio: ['ignore', 'ignore', 'pipe'] });
  const child = labSpawn(lab, node, ['haproxy', '-db', '-f', cfg], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-4000)));
  child.stderr!.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-4000)));
  const pid = child.pid!;
  await until(
    `haproxy ${name} in ${node} listening on ${forwards.map((f) => f.port).join(', ')}`,
    10_000,
    () => {
      if (child.exitCode !== null) throw new Error(`haproxy ${name} in ${node} exited (${child.exitCode}): ${out.trim()}`);
      const open = listeningPorts(pid);
      return forwards.every((f) => open.has(f.port)) ? true : undefined;
    },
    () => `  its output: ${out.trim() || '(none)'}`,
    50,
  );
  return { name, child, pid };
}
