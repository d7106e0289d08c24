/**
 * Writes of one event-loop turn to a socket, sent as one.
 *
 * The tunnel's HTTP/2 session hands a stream's bytes over one DATA frame (at
 * most 16 KB) at a time, and piped straight on, each frame became its own
 * write(2) to the pod: in a profile of the destination proxy under one bulk
 * stream, that write was more than half its time. Corked for the rest of the
 * turn, the frames that came in one read of the tunnel leave in one writev(2).
 *
 * One immediate for all sockets corked in a turn; the list holds only those.
 */
import type * as net from 'node:net';

const corked: net.Socket[] = [];
let scheduled = false;

function flush(): void {
  scheduled = false;
  for (let i = 0; i < corked.length; i++) corked[i]!.uncork();
  corked.length = 0;
}

/** Corks `socket` until the end of this event-loop turn (check phase), unless it is corked already. */
export function corkForTurn(socket: net.Socket): void {
  if (socket.writableCorked > 0 || socket.destroyed) return;
  socket.cork();
  corked.push(socket);
  if (!scheduled) {
    scheduled = true;
    setImmediate(flush);
  }
}
