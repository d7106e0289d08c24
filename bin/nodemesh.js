#!/usr/bin/env node
'use strict';
// Entry point of the `nodemesh` executable; the code lives in dist/ (npm run build).
const problem = require('./check-runtime.js').runtimeProblem();
if (problem) {
  process.stderr.write(problem);
  process.exit(1);
}
let cli;
try {
  cli = require('../dist/src/cli/main.js');
} catch (err) {
  if (err && err.code === 'MODULE_NOT_FOUND' && String(err.message).includes('dist/src/cli/main.js')) {
    process.stderr.write('nodemesh is not built yet: run `npm run build` (or `npm test`, which also installs what is missing)\n');
    process.exit(1);
  }
  throw err;
}
// `nodemesh flows | head`: a reader that went away is not an error.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (err) => {
    if (err && err.code === 'EPIPE') process.exit(process.exitCode || 0);
    throw err;
  });
}
cli.main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`nodemesh: unexpected error: ${err && err.stack ? err.stack : err}\n`);
    process.exitCode = 70;
  },
);
