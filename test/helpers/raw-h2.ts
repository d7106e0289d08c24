/**
 * A raw HTTP/2 client for attack tests: it writes frames as bytes, so it can
 * send what no well-behaved client library would (floods, resets, streams
 * that never end), over real TLS with ALPN h2.
 */
import * as net from 'node:net';
import * as tls from 'node:tls';

export const FRAME = { DATA: 0, HEADERS: 1, RST_STREAM: 3, SETTINGS: 4, PING: 6, GOAWAY: 7 } as const;
export const FLAG = { END_STREAM: 0x1, END_HEADERS: 0x4 } as const;
const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');

export function frame(type: number, flags: number, stream: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(stream & 0x7fffffff, 5);
  return Buffer.concat([h, payload]);
}

function literal(nameIndex: number, value: string): Buffer {
  // Literal header field without indexing, indexed name (RFC 7541 §6.2.2), short value.
  const v = Buffer.from(value);
  const name = nameIndex < 15 ? [nameIndex] : [0x0f, nameIndex - 15];
  return Buffer.concat([Buffer.from([...name, v.length]), v]);
}

/** An HPACK block for a gRPC POST to `path` (static-table names, no Huffman). */
export function grpcRequestHeaders(path: string, authority = 'nodemesh-controller'): Buffer {
  return Buffer.concat([
    Buffer.from([0x83, 0x87]), // :method POST, :scheme https
    literal(0x04, path), // :path
    literal(0x01, authority), // :authority
    literal(31, 'application/grpc'), // content-type
  ]);
}

export interface RawH2 {
  socket: tls.TLSSocket;
  /** Resolves when the server closed or reset the connection. */
  closed: Promise<void>;
  isClosed(): boolean;
  /** Writes frames as fast as the socket takes them until it closes or `stop()`. */
  flood(make: (i: number) => Buffer, batch?: number): { stop(): void; sent(): number };
}

/** Opens TLS (ALPN h2) from `localAddress`, sends the preface and an empty SETTINGS. */
export function rawH2(opts: { port: number; host?: string; ca: string; servername?: string; localAddress?: string }): Promise<RawH2> {
  return new Promise((resolve, reject) => {
    const tcp = net.connect({ port: opts.port, host: opts.host ?? '127.0.0.1', localAddress: opts.localAddress });
    const socket = tls.connect({ socket: tcp, ca: opts.ca, servername: opts.servername ?? 'nodemesh-controller', ALPNProtocols: ['h2'] });
    let isClosed = false;
    const closed = new Promise<void>((r) => socket.once('close', () => ((isClosed = true), r())));
    socket.on('error', () => {});
    socket.on('data', () => {}); // read what the server says, as a real client would
    socket.once('secureConnect', () => {
      socket.write(Buffer.concat([PREFACE, frame(FRAME.SETTINGS, 0, 0)]));
      resolve({
        socket,
        closed,
        isClosed: () => isClosed,
        flood(make, batch = 100) {
          let i = 0;
          let stopped = false;
          const pump = (): void => {
            if (stopped || socket.destroyed) return;
            const bufs: Buffer[] = [];
            for (let k = 0; k < batch; k++) bufs.push(make(i++));
            socket.write(Buffer.concat(bufs), () => setImmediate(pump));
          };
          pump();
          return { stop: () => void (stopped = true), sent: () => i };
        },
      });
    });
    socket.once('close', () => reject(new Error('closed before the TLS handshake finished')));
  });
}

/** A plain TCP connection from `localAddress` that sends `bytes` (or nothing) and then waits. */
export function silentTcp(port: number, localAddress: string, bytes?: Buffer): { socket: net.Socket; closed: Promise<void>; isClosed(): boolean } {
  const socket = net.connect({ port, host: '127.0.0.1', localAddress });
  let isClosed = false;
  socket.on('error', () => {});
  // Read (and drop) what comes back, so the server's close is seen as EOF.
  socket.resume();
  if (bytes) socket.once('connect', () => socket.write(bytes));
  const closed = new Promise<void>((r) => socket.once('close', () => ((isClosed = true), r())));
  return { socket, closed, isClosed: () => isClosed };
}
