/**
 * Before any test: build dist/ (some tests run the service as real child processes) and make sure a Redis
 * answers on 127.0.0.1:6379, starting a private redis-server there when none does (stopped again by
 * global-teardown.js), so that `npm test` needs nothing started by hand.
 */
const { execFileSync, spawn } = require('node:child_process');
const net = require('node:net');
const path = require('node:path');

const REDIS_PORT = 6379;

function redisAnswers() {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port: REDIS_PORT });
    const done = (answer) => {
      socket.destroy();
      resolve(answer);
    };
    socket.setTimeout(1000, () => done(false));
    socket.on('error', () => done(false));
    socket.on('connect', () => socket.write('PING\r\n'));
    socket.on('data', (data) => done(data.toString().startsWith('+PONG')));
  });
}

module.exports = async () => {
  const root = path.join(__dirname, '..');
  execFileSync(
    process.execPath,
    [require.resolve('typescript/bin/tsc'), '-p', path.join(root, 'tsconfig.build.json')],
    { cwd: root, stdio: 'inherit' },
  );

  if (await redisAnswers()) return;
  let redis;
  try {
    redis = spawn(
      'redis-server',
      ['--bind', '127.0.0.1', '--port', String(REDIS_PORT), '--save', '', '--appendonly', 'no'],
      { stdio: 'ignore', detached: true },
    );
    await new Promise((resolve, reject) => {
      redis.once('error', reject);
      redis.once('spawn', resolve);
    });
  } catch {
    throw new Error(
      'The tests need Redis on 127.0.0.1:6379 and no redis-server could be started: install it (apt-get install redis-server).',
    );
  }
  for (let attempt = 0; attempt < 50 && !(await redisAnswers()); attempt += 1)
    await new Promise((resolve) => setTimeout(resolve, 100));
  globalThis.__startedRedis = redis.pid;
};
