/**
 * The node proxy loads what it needs and none of the controller: not its
 * store (better-sqlite3, a native addon a node has no use for), not its CA,
 * registry or push; only the client, which depends on src/api alone.
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

import { t } from 'tap';

t.test('the proxy does not load the controller', async (t) => {
  const proxy = path.join(__dirname, '..', '..', 'src', 'node-proxy', 'proxy.js');
  const r = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(proxy)}); console.log(JSON.stringify(Object.keys(require.cache)))`], { encoding: 'utf8' });
  t.equal(r.status, 0, r.stderr);
  const loaded = (JSON.parse(r.stdout) as string[]).map((f) => f.split(path.sep).join('/'));
  t.ok(loaded.some((f) => f.endsWith('/node-proxy/proxy.js')), 'the proxy itself was loaded');
  t.same(loaded.filter((f) => /\/node_modules\/better-sqlite3\//.test(f)), [], 'no better-sqlite3');
  t.same(loaded.filter((f) => /\/dist\/src\/controller\//.test(f)).map((f) => f.slice(f.indexOf('/controller/'))), ['/controller/client.js'], 'of the controller, only its client');
});
