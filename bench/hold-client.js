// Idle connections from a lab pod (plain JS: it runs inside the pod), for the
// memory benchmark. Opens COUNT connections to HOST:PORT, PARALLEL at a time;
// each makes one 64 B round trip first, so it is known to reach the server
// (through the mesh: both proxies and the tunnel hold it). Then it prints
// {"holding":N,"errors":E,"openMs":T} and holds them, idle, until a line on
// stdin (or stdin's end, or HOLD_MS) closes them all; prints {"closed":N} and exits.
//   node hold-client.js HOST PORT COUNT PARALLEL OPEN_MS HOLD_MS
'use strict';
const net = require('node:net');
const [host, port, count, parallel, openMs, holdMs] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4]), Number(process.argv[5]), Number(process.argv[6]), Number(process.argv[7])];
const payload = Buffer.alloc(64, 120);
const held = [];
let errors = 0;
let lastError = '';

function openOne() {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    const timer = setTimeout(() => s.destroy(new Error('no answer within 10 s')), 10_000);
    let got = 0;
    s.setNoDelay(true);
    s.on('connect', () => s.write(payload));
    const onData = (d) => {
      got += d.length;
      if (got < 64) return;
      clearTimeout(timer);
      s.off('data', onData);
      held.push(s);
      resolve();
    };
    s.on('data', onData);
    s.on('error', (err) => {
      clearTimeout(timer);
      errors++;
      lastError = err.message;
      resolve();
    });
  });
}

(async () => {
  const start = Date.now();
  const deadline = start + openMs;
  let next = 0;
  const worker = async () => {
    while (next < count && Date.now() < deadline && errors < 100) {
      next++;
      await openOne();
    }
  };
  await Promise.all(Array.from({ length: parallel }, worker));
  process.stdout.write(JSON.stringify({ holding: held.length, errors, lastError, openMs: Date.now() - start }) + '\n');
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    for (const s of held) s.destroy();
    process.stdout.write(JSON.stringify({ closed: held.length }) + '\n');
    setTimeout(() => process.exit(0), 200);
  };
  process.stdin.on('data', close);
  process.stdin.on('end', close);
  setTimeout(close, holdMs).unref();
})();
