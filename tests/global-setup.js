/**
 * Some tests run the service as real child processes (several instances on one Redis, SIGTERM during a
 * request, the production install): they need the built output, so it is built once per test run.
 */
const { execFileSync } = require('node:child_process');
const path = require('node:path');

module.exports = async () => {
  const root = path.join(__dirname, '..');
  execFileSync(process.execPath, [require.resolve('typescript/bin/tsc'), '-p', path.join(root, 'tsconfig.build.json')], { cwd: root, stdio: 'inherit' });
};
