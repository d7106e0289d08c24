/**
 * A young-generation GC for every SCAVENGE_EVERY bytes the proxy forwards.
 *
 * Each chunk the proxy forwards lives in an ArrayBuffer of its own (a read
 * of a pod's socket, or the decrypted tunnel bytes the HTTP/2 DATA frames of
 * one read point into), and V8 counts those as external memory. The data
 * path allocates little else on the JS heap (about 130 KB between two
 * scavenges), so young GCs, which free such buffers once they are written,
 * come seldom. V8 adds the external memory allocated since the last full GC
 * to the old generation's size, and once that passes the old generation's
 * limit (10 MB above the 19 MB heap of a lab proxy) it starts a full
 * mark-compact of the whole heap: under one bulk stream across nodes each
 * proxy ran 5-8 a second, a quarter of its CPU in a perf profile (concurrent
 * marking and sweeping). A scavenge visits only what is still young and
 * live, 0.3-0.8 ms in a lab proxy, and frees those buffers first.
 *
 * V8 gives a minor GC only through its `gc` function (./v8-gc). Where V8
 * will not give it, counting is all this does.
 */
import { v8Gc } from './v8-gc';

/** Below that room of 10 MB: a scavenge every 16 MB came too late each time, and every one of them went with a full GC. */
export const SCAVENGE_EVERY = 4 << 20;

let counted = 0;
let scheduled = false;

function scavenge(): void {
  scheduled = false;
  counted = 0;
  v8Gc()?.({ type: 'minor' });
}

/**
 * Counts `bytes` forwarded; past SCAVENGE_EVERY since the last scavenge, one
 * runs at the end of this event-loop turn, after the turn's writes went out
 * (../coalesce), so the buffers they held are garbage by then.
 */
export function forwarded(bytes: number): void {
  counted += bytes;
  if (counted < SCAVENGE_EVERY || scheduled) return;
  scheduled = true;
  setImmediate(scavenge);
}
