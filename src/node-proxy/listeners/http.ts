/**
 * HTTP/1 servers of the proxy (admin 15000 and its unix socket, metrics
 * 15020, health 15021), made through one function so each gets the same
 * bounds: request head and whole request deadlines (checked every
 * connectionsCheckingInterval, so that is kept well below them), keep-alive
 * and idle timeouts, header count and size, and admission through a
 * ListenerGuard (total and per peer address).
 */
import * as http from 'node:http';
import type * as net from 'node:net';

import { ListenerGuard, type ListenerReporter } from './guard';
import type { HttpLimits } from './limits';

export function createHttpServer(name: string, l: HttpLimits, reporter: ListenerReporter, handler: http.RequestListener): { server: http.Server; guard: ListenerGuard } {
  const guard = new ListenerGuard(name, l, reporter);
  const server = http.createServer(
    {
      headersTimeout: l.headersTimeoutMs,
      requestTimeout: l.requestTimeoutMs,
      keepAliveTimeout: l.keepAliveTimeoutMs,
      maxHeaderSize: l.maxHeaderSize,
      connectionsCheckingInterval: Math.max(50, Math.min(1_000, Math.floor(l.headersTimeoutMs / 4))),
    },
    handler,
  );
  server.maxHeadersCount = l.maxHeadersCount;
  server.maxRequestsPerSocket = l.maxRequestsPerSocket;
  // Backstop behind the guard, which counts and reports what it refuses.
  server.maxConnections = l.maxConnections + 1;
  server.on('connection', (socket: net.Socket) => {
    // A unix socket has no address: all its clients are one peer, the host's root.
    guard.admit(socket, socket.remoteAddress === undefined ? 'unix' : undefined);
  });
  server.setTimeout(l.idleTimeoutMs, (socket: net.Socket) => {
    guard.reject('http-timeout', { remote: socket.remoteAddress, detail: `no bytes either way for ${l.idleTimeoutMs} ms` });
    socket.destroy();
  });
  server.on('clientError', (err: NodeJS.ErrnoException, socket: net.Socket) => {
    const timeout = err.code === 'ERR_HTTP_REQUEST_TIMEOUT';
    guard.reject(timeout ? 'http-timeout' : 'http-bad-request', { remote: socket.remoteAddress, detail: err.code ?? err.message });
    if (!socket.writable || socket.destroyed) {
      socket.destroy();
      return;
    }
    socket.end(timeout ? 'HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n' : 'HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
    // A peer that does not read must not keep the socket past the answer.
    const cut = setTimeout(() => socket.destroy(), 1_000);
    cut.unref();
    socket.once('close', () => clearTimeout(cut));
  });
  return { server, guard };
}
