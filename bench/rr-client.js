// Request/response load from a lab pod (plain JS: it runs inside the pod).
//   node rr-client.js HOST PORT SECONDS CONCURRENCY MODE   (MODE: connect | persistent)
// connect: a new connection per request (64 B out, 64 B back, close);
// persistent: round trips on CONCURRENCY long-lived connections;
// paced: 1 KB request/response at 1,000 per second on one connection (latency).
// Prints {"requests":N,"seconds":S,"errors":E,"p50Ms":x,"p99Ms":y}
'use strict';
const net = require('node:net');
const [host, port, seconds, concurrency, mode] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4]), Number(process.argv[5]), process.argv[6] || 'connect'];
const payload = Buffer.alloc(64, 120);
const lat = [];
let requests = 0;
let errors = 0;
const end = Date.now() + seconds * 1000;

function once() {
  return new Promise((resolve) => {
    const t0 = process.hrtime.bigint();
    const s = net.connect({ host, port });
    let got = 0;
    s.setNoDelay(true);
    s.on('connect', () => s.write(payload));
    s.on('data', (d) => {
      got += d.length;
      if (got >= 64) { lat.push(Number(process.hrtime.bigint() - t0) / 1e6); requests++; s.destroy(); resolve(); }
    });
    s.on('error', () => { errors++; resolve(); });
  });
}

async function connectLoop() { while (Date.now() < end) await once(); }

async function openConnection() {
  const s = net.connect({ host, port });
  s.setNoDelay(true);
  await new Promise((r, j) => s.once('connect', r).once('error', j));
  return s;
}

/** Writes `body` and waits for as many bytes back; records the latency. */
function roundTrip(s, body) {
  const t0 = process.hrtime.bigint();
  return new Promise((resolve) => {
    let got = 0;
    const on = (d) => {
      got += d.length;
      if (got < body.length) return;
      s.off('data', on);
      lat.push(Number(process.hrtime.bigint() - t0) / 1e6);
      requests++;
      resolve();
    };
    s.on('data', on);
    s.write(body);
  });
}

async function persistentLoop() {
  const s = await openConnection();
  while (Date.now() < end) await roundTrip(s, payload);
  s.destroy();
}

async function pacedLoop() {
  const body = Buffer.alloc(1024, 121);
  const s = await openConnection();
  const t0 = Date.now();
  for (let i = 0; Date.now() < end; i++) {
    const wait = t0 + i - Date.now(); // one per millisecond
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    await roundTrip(s, body);
  }
  s.destroy();
}

(async () => {
  const start = Date.now();
  await Promise.all(Array.from({ length: concurrency }, () => (mode === 'persistent' ? persistentLoop() : mode === 'paced' ? pacedLoop() : connectLoop())));
  lat.sort((a, b) => a - b);
  const pct = (p) => lat[Math.min(lat.length - 1, Math.floor((p / 100) * lat.length))] || 0;
  process.stdout.write(JSON.stringify({ requests, seconds: (Date.now() - start) / 1000, errors, p50Ms: pct(50), p99Ms: pct(99) }) + '\n');
})();
