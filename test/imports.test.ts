/**
 * No file of src/ sits in a circle of imports, type-only ones included: a
 * circle makes load order matter (a runtime one is a trap) and ties modules
 * that should stand in layers (interfaces at the bottom, as lb/types.ts).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { t } from 'tap';

import { PACKAGE_ROOT } from '../src/paths';

const SRC = path.join(PACKAGE_ROOT, 'src');

function files(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? files(path.join(dir, e.name)) : e.name.endsWith('.ts') ? [path.join(dir, e.name)] : []));
}

/** Relative imports and re-exports of each file, resolved to files. */
function graph(): Map<string, string[]> {
  const g = new Map<string, string[]>();
  for (const f of files(SRC)) {
    const text = fs.readFileSync(f, 'utf8');
    const deps: string[] = [];
    for (const m of text.matchAll(/^(?:import|export)\b[^'"]*?from\s+'(\.[^']+)'/gm)) {
      const target = path.resolve(path.dirname(f), m[1]!);
      deps.push(fs.existsSync(target) && fs.statSync(target).isDirectory() ? path.join(target, 'index.ts') : `${target}.ts`);
    }
    g.set(f, deps);
  }
  return g;
}

/** The strongly connected components with more than one file (Tarjan). */
function circles(g: Map<string, string[]>): string[][] {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const on = new Set<string>();
  const out: string[][] = [];
  let n = 0;
  const visit = (v: string): void => {
    index.set(v, n);
    low.set(v, n++);
    stack.push(v);
    on.add(v);
    for (const w of g.get(v) ?? []) {
      if (!g.has(w)) continue;
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (on.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const comp: string[] = [];
      for (;;) {
        const w = stack.pop()!;
        on.delete(w);
        comp.push(path.relative(SRC, w));
        if (w === v) break;
      }
      if (comp.length > 1) out.push(comp.sort());
    }
  };
  for (const v of g.keys()) if (!index.has(v)) visit(v);
  return out;
}

t.test('no circle of imports in src/', async (t) => {
  const g = graph();
  t.ok(g.size > 100, `${g.size} files read`);
  t.same(circles(g), []);
});

t.test('the check finds a circle when there is one', async (t) => {
  const g = new Map([
    ['/a.ts', ['/b.ts']],
    ['/b.ts', ['/c.ts']],
    ['/c.ts', ['/a.ts']],
    ['/d.ts', ['/a.ts']],
  ]);
  t.equal(circles(g).length, 1);
});
