/**
 * Files the proxy keeps in its state dir are replaced whole or not at all:
 * written to a temporary name beside the target, flushed to disk, renamed
 * over it, and the directory flushed, so a crash or power loss at any moment
 * leaves the old file or the new one, never a mix. All of it runs in libuv's
 * thread pool: the event loop only waits for callbacks.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';

let serial = 0;

export async function writeFileAtomic(file: string, data: Uint8Array | string, mode = 0o600): Promise<void> {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${++serial}.tmp`);
  let fh: fs.FileHandle | undefined;
  try {
    fh = await fs.open(tmp, 'wx', mode);
    // The mode given to open() is masked by the umask; the file holds keys.
    await fh.chmod(mode);
    await fh.writeFile(data);
    await fh.sync();
    await fh.close();
    fh = undefined;
    await fs.rename(tmp, file);
  } catch (err) {
    await fh?.close().catch(() => {});
    await fs.rm(tmp, { force: true }).catch(() => {});
    throw err;
  }
  // The rename is durable once the directory is; a failure here loses nothing already renamed.
  const dir = await fs.open(path.dirname(file), 'r').catch(() => undefined);
  await dir?.sync().catch(() => {});
  await dir?.close().catch(() => {});
}
