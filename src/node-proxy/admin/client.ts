/** Reaching a proxy's admin API through its unix socket (works across network namespaces). */
import * as http from 'node:http';
import * as path from 'node:path';

import { MeshError } from '../../errors';

/** Where each proxy's admin socket lives, by node, whatever its state dir. */
export const PROXY_RUN_DIR = '/run/nodemesh/proxy';

export function adminSocketOf(node: string): string {
  return path.join(PROXY_RUN_DIR, node, 'admin.sock');
}

/** GET `urlPath` from a proxy's admin socket; with onLine, streams the body line by line. */
export function adminGet(socket: string, urlPath: string, onLine?: (line: string) => void): Promise<string> {
  return new Promise((resolve, reject) => {
    // A connection per request (agent: false), not one kept alive in the global agent's pool: after an upgrade the
    // path reaches the new process, and a pooled connection to the old one would meet its close as ECONNRESET.
    const req = http.get({ socketPath: socket, path: urlPath, agent: false }, (res) => {
      let body = '';
      let rest = '';
      res.on('data', (d: Buffer) => {
        if (!onLine) return void (body += d.toString());
        rest += d.toString();
        let i: number;
        while ((i = rest.indexOf('\n')) >= 0) {
          onLine(rest.slice(0, i));
          rest = rest.slice(i + 1);
        }
      });
      res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new MeshError('NM_ERR_ADMIN', `${urlPath}: HTTP ${res.statusCode}: ${body.trim()}`))));
      // Cut short (the proxy closed its admin socket: it stopped, or handed over to an upgrade's new process): no 'end'.
      res.on('close', () => {
        if (!res.complete) reject(new MeshError('NM_ERR_ADMIN_CLOSED', `${urlPath}: the proxy on ${socket} closed the connection before it answered whole`));
      });
    });
    req.on('error', (err: NodeJS.ErrnoException) =>
      reject(new MeshError('NM_ERR_ADMIN', `cannot reach the proxy admin socket ${socket}: ${err.code ?? err.message} (is \`nodemesh proxy\` running for that node?)`)),
    );
  });
}
