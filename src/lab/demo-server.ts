/**
 * The demo's pod server: answers every connection on PORT with its name.
 *   node dist/src/lab/demo-server.js NAME [PORT=8080]
 */
import * as net from 'node:net';

const name = process.argv[2] ?? 'pod';
const port = Number(process.argv[3] ?? 8080);
net
  .createServer((s) => {
    s.on('error', () => {});
    s.end(`hello from ${name}\n`);
  })
  .listen({ port, host: '::' }, () => console.log(`serving ${name} on ${port}`));
