'use strict';
// Refuses a Node.js older than package.json's "engines" (a supported LTS).
// Plain JS without dependencies, so it runs on any Node.js and says why.
const { engines } = require('../package.json');

/** Why this Node.js cannot run nodemesh, or undefined when it can. */
function runtimeProblem(version = process.versions.node, execPath = process.execPath) {
  const want = /(\d+)\.(\d+)/.exec(engines.node);
  const [major, minor] = version.split('.').map(Number);
  if (want && (major > Number(want[1]) || (major === Number(want[1]) && minor >= Number(want[2])))) return undefined;
  return (
    `nodemesh needs Node.js ${engines.node} (a supported LTS); this is v${version} (${execPath}).\n` +
    'Run it through npm (`npm test`, `npm run demo`, `npx nodemesh ...`), which uses the runtime `npm ci`\n' +
    'installs as node_modules/.bin/node, or call node_modules/.bin/node yourself.\n'
  );
}

module.exports = { runtimeProblem };

if (require.main === module) {
  const problem = runtimeProblem();
  if (problem) {
    process.stderr.write(problem);
    process.exit(1);
  }
}
