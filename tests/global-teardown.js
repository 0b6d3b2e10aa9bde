/** Stops the redis-server that global-setup.js started, if it started one. */
module.exports = async () => {
  const pid = globalThis.__startedRedis;
  if (pid !== undefined) process.kill(pid, 'SIGTERM');
};
