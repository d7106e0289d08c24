/** The example resources shipped in examples/ stay valid. */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { t } from 'tap';

import { parseDocuments, validateDocuments } from '../../src/api/validate';
import { PACKAGE_ROOT } from '../../src/paths';

const dir = path.join(PACKAGE_ROOT, 'examples');
for (const f of fs.readdirSync(dir).filter((x) => /\.ya?ml$/.test(x))) {
  t.test(f, async (t) => {
    const docs = parseDocuments(fs.readFileSync(path.join(dir, f), 'utf8'), f);
    t.ok(docs.length > 0);
    const resources = validateDocuments(docs);
    t.equal(resources.length, docs.length, 'every document is a valid resource');
  });
}
