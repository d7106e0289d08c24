/**
 * Files the proxy keeps in its state dir are replaced whole or not at all:
 * written to a temporary name beside the target, flushed to disk, renamed
 * over it, and the directory flushed, so a crash or power loss at any moment
 * leaves the old file or the new one, never a mix. All of it runs in libuv's
 * thread pool: the event loop only waits for callbacks.
 */
import * as fsSync from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';

import { processRuns } from '../../pid';

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

/**
 * Removes the temporary files writeFileAtomic() left beside `file` when the
 * process writing them died mid-write (kill -9, power loss); returns their
 * names. A live process's (the old one of an upgrade, still saving) are kept.
 */
export function removeStaleTemps(file: string): string[] {
  const dir = path.dirname(file);
  const prefix = `.${path.basename(file)}.`;
  let names: string[];
  try {
    names = fsSync.readdirSync(dir);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const name of names) {
    if (!name.startsWith(prefix) || !name.endsWith('.tmp')) continue;
    const pid = Number(name.slice(prefix.length).split('.')[0]);
    if (!Number.isSafeInteger(pid) || pid <= 0 || processRuns(pid)) continue;
    fsSync.rmSync(path.join(dir, name), { force: true });
    removed.push(name);
  }
  return removed;
}
