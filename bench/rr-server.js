// Echo server for rr-client.js: answers every 64 bytes with 64 bytes.
//   node rr-server.js PORT...
'use strict';
const net = require('node:net');
const ports = process.argv.slice(2).map(Number);
let up = 0;
for (const port of ports) {
  net.createServer((s) => { s.setNoDelay(true); s.on('error', () => {}); s.pipe(s); })
    .listen({ port, host: '::' }, () => { if (++up === ports.length) console.log('serving'); });
}
