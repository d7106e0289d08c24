/**
 * docs/architecture.md is the one description of how nodemesh is built that
 * a user of the repository has: code, comments and program output point
 * there, by section title, and never at a design file outside the
 * repository. No root needed.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { t } from 'tap';

import { PACKAGE_ROOT } from '../src/paths';

const ARCHITECTURE = 'docs/architecture.md';
/** What the repository ships as source, docs and scripts; build output and dependencies are not in these. */
const ROOTS = ['src', 'bench', 'bin', 'scripts', 'bpf', 'native', 'test', 'examples', 'docs', 'README.md', 'SECURITY.md', 'package.json', 'binding.gyp'];
const TEXT = /\.(ts|js|c|h|cc|cpp|sh|md|json|ya?ml|proto|gyp|txt)$|(^|\/)(Makefile|CMakeLists\.txt)$/;
const SELF = path.join('test', 'docs.test.ts');

function files(rel: string): string[] {
  const abs = path.join(PACKAGE_ROOT, rel);
  if (!fs.existsSync(abs)) return [];
  if (fs.statSync(abs).isFile()) return [rel];
  return fs
    .readdirSync(abs, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? files(path.join(rel, e.name)) : TEXT.test(e.name) ? [path.join(rel, e.name)] : []));
}

/** [file:line, text] of every line matching `re` under ROOTS (this file excepted: it names the patterns). */
function grep(re: RegExp): [string, string][] {
  const hits: [string, string][] = [];
  for (const f of ROOTS.flatMap(files)) {
    if (f === SELF) continue;
    fs.readFileSync(path.join(PACKAGE_ROOT, f), 'utf8')
      .split('\n')
      .forEach((line, i) => {
        if (re.test(line)) hits.push([`${f}:${i + 1}`, line.trim()]);
      });
  }
  return hits;
}

t.test('nothing points at a design file the repository does not have', async (t) => {
  const hits = grep(/shared\/DESIGN|\.\.\/shared\/|DESIGN(\.md)? §/);
  t.same(
    hits.map(([where, line]) => `${where}: ${line}`),
    [],
    `point at ${ARCHITECTURE} by section instead ("see ${ARCHITECTURE}, 'The data path'")`,
  );
});

t.test(`every "${ARCHITECTURE}, '<section>'" names a heading it has`, async (t) => {
  const doc = fs.readFileSync(path.join(PACKAGE_ROOT, ARCHITECTURE), 'utf8');
  const headings = new Set([...doc.matchAll(/^#{1,6} +(.+?) *$/gm)].map((m) => m[1]!));
  // A reference may wrap onto the next comment line, before its quote or inside it.
  const unwrap = (s: string): string => s.replace(/\s*\n\s*(\*(?!\/)|\/\/|#)?\s*/g, ' ');
  const refs: [string, string][] = [];
  for (const f of ROOTS.flatMap(files)) {
    if (f === SELF) continue;
    const text = fs.readFileSync(path.join(PACKAGE_ROOT, f), 'utf8');
    for (const m of text.matchAll(/docs\/architecture\.md,[\s*/#]*'([^']+)'/g)) {
      const line = text.slice(0, m.index).split('\n').length;
      refs.push([`${f}:${line}`, unwrap(m[1]!)]);
    }
  }
  t.ok(refs.length >= 10, `the code points at ${ARCHITECTURE} (${refs.length} references found)`);
  const broken = refs.filter(([, section]) => !headings.has(section)).map(([where, section]) => `${where}: '${section}'`);
  t.same(broken, [], `sections that ${ARCHITECTURE} has: ${[...headings].map((h) => `'${h}'`).join(', ')}`);
});

t.test('README.md says where the architecture is described', async (t) => {
  const readme = fs.readFileSync(path.join(PACKAGE_ROOT, 'README.md'), 'utf8');
  const link = readme.indexOf(`](${ARCHITECTURE})`);
  t.ok(link >= 0, `README.md links ${ARCHITECTURE}`);
  t.ok(link >= 0 && link < readme.indexOf('\n## '), 'before its first section, where a reader looks for how it works');
});
