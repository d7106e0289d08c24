import * as fs from 'node:fs';
import * as path from 'node:path';

import { PACKAGE_ROOT } from './paths';

/** nodemesh's version, from package.json. */
export const VERSION: string = (
  JSON.parse(fs.readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }
).version;
