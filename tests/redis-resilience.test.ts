import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import net from 'node:net';
import type supertest from 'supertest';
import { freePort } from './helpers/free-port';
import {
  postToken,
  signToken,
  startTestSandbox,
  startTestService,
  type TestService,
  uniquePrefix,
  validForm,
} from './helpers/test-service';

/**
 * Redis trouble does not take the service down: a private redis-server that this file starts,
 * kills and starts again on the same port. While it is away the service answers with per-process limits
 * (the insurance limiter), says so in /readyz and once in the log, and shares limits again by itself when
 * Redis returns.
 */

const PREFIX = uniquePrefix();
/** Short reconnect back-off and timeouts (they are configuration) keep the outage and the return quick. */
const REDIS_TUNING = {
  REDIS_CONNECT_TIMEOUT_MS: '500',
  REDIS_COMMAND_TIMEOUT_MS: '300',
  REDIS_MAX_RECONNECT_DELAY_MS: '200',
};

const redisProcesses: ChildProcess[] = [];
const services: TestService[] = [];
const sandboxes: Array<TestService['sandbox']> = [];

afterAll(async () => {
  // Everything goes, whatever failed above.
  for (const service of services) await service.close().catch(() => undefined);
  for (const sandbox of sandboxes) await sandbox.close().catch(() => undefined);
  await Promise.all(redisProcesses.map((child) => stopRedis(child)));
});

/** Resolves once something on `port` answers a Redis PING with PONG. */
async function pingRedis(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    let answer = '';
    socket.setTimeout(300, () => {
      socket.destroy();
      resolve(false);
    });
    socket.on('connect', () => socket.write('PING\r\n'));
    socket.on('data', (chunk: Buffer) => {
      answer += chunk.toString('utf8');
      if (answer.includes('\r\n')) {
        socket.destroy();
        resolve(answer.startsWith('+PONG'));
      }
    });
    socket.on('error', () => resolve(false));
  });
}

async function startRedis(port: number): Promise<ChildProcess> {
  const child = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    { stdio: 'ignore' },
  );
  redisProcesses.push(child);
  await waitFor(() => pingRedis(port), 5_000, `redis-server on port ${port} did not answer`);
  return child;
}

async function stopRedis(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGKILL');
  await exited;
}

async function waitFor(condition: () => boolean | Promise<boolean>, timeoutMs: number, message: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(message);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

async function start(env: Record<string, string>, sandbox: TestService['sandbox']): Promise<TestService> {
  const target = await startTestService(
    { ...REDIS_TUNING, RATE_LIMIT_MAX: '2', RATE_LIMIT_WINDOW_SECONDS: '60', REDIS_KEY_PREFIX: PREFIX, ...env },
    sandbox,
  );
  services.push(target);
  return target;
}

async function newSandbox(): Promise<TestService['sandbox']> {
  const sandbox = await startTestSandbox();
  sandboxes.push(sandbox);
  return sandbox;
}

async function post(target: TestService, sub: string): Promise<supertest.Response> {
  return postToken(target, validForm(), { Authorization: `Bearer ${await signToken({ sub })}` });
}

interface Readiness {
  status: string;
  checks: { redis: string };
}
async function readiness(target: TestService): Promise<{ httpStatus: number; body: Readiness }> {
  const response = await target.http().get('/readyz');
  return { httpStatus: response.status, body: response.body as Readiness };
}

const logLinesMatching = (target: TestService, pattern: RegExp): Array<Record<string, unknown>> =>
  target.log.lines().filter((line) => typeof line.msg === 'string' && pattern.test(line.msg));

const newUser = (): string => `user-${randomUUID()}`;

describe('when Redis goes away and comes back', () => {
  it('when Redis is up, then down, then up again, then the service keeps answering with per-process limits, reports degraded, and shares limits again by itself', async () => {
    const port = await freePort();
    const redisUrl = `redis://127.0.0.1:${port}`;
    const sandbox = await newSandbox();
    let redis = await startRedis(port);
    const a = await start({ REDIS_URL: redisUrl }, sandbox);
    await waitFor(async () => (await readiness(a)).body.status === 'ready', 3_000, '/readyz never said ready');

    // Up: ready, and Redis is checked.
    const up = await readiness(a);
    expect(up.httpStatus).toBe(200);
    expect(up.body.status).toBe('ready');
    expect(up.body.checks.redis).toBe('ok');

    // Down: kill Redis.
    await stopRedis(redis);
    await waitFor(async () => (await readiness(a)).body.status !== 'ready', 3_000, '/readyz never noticed Redis left');
    const before = sandbox.received.length;
    const user = newUser();
    const first = await post(a, user);
    const second = await post(a, user);
    expect([first.status, second.status]).toEqual([201, 201]);
    // The insurance limiter keeps counting per process: the third request of the window is refused.
    const third = await post(a, user);
    expect(third.status).toBe(429);
    expect(third.body).toMatchObject({ status: 429, code: 'RATE_LIMITED' });
    expect(String(third.headers['retry-after'])).toMatch(/^\d+$/);
    expect(sandbox.received.length).toBe(before + 2);

    const down = await readiness(a);
    expect(down.httpStatus).toBe(200);
    expect(down.body.status).toBe('degraded');
    expect(down.body.checks.redis).toMatch(/unreachable/);

    // Several reconnect attempts fail meanwhile (200 ms back-off), but the log says it once per outage.
    await new Promise((resolve) => setTimeout(resolve, 700));
    const unreachable = logLinesMatching(a, /Redis unreachable/i);
    expect(unreachable).toHaveLength(1);
    expect(unreachable[0]?.level).toBe(40);

    // Back: same port, a fresh redis-server.
    redis = await startRedis(port);
    await waitFor(
      async () => (await readiness(a)).body.status === 'ready',
      5_000,
      '/readyz did not return to ready after Redis came back',
    );
    const back = await readiness(a);
    expect(back.httpStatus).toBe(200);
    expect(back.body.checks.redis).toBe('ok');
    expect(logLinesMatching(a, /Redis is back/i)).toHaveLength(1);

    // Shared again: a second instance on the same Redis sees what the first spent.
    const b = await start({ REDIS_URL: redisUrl }, sandbox);
    await waitFor(
      async () => (await readiness(b)).body.status === 'ready',
      3_000,
      'the second instance never reached Redis',
    );
    const shared = newUser();
    expect((await post(a, shared)).status).toBe(201);
    expect((await post(b, shared)).status).toBe(201);
    const beforeRefusals = sandbox.received.length;
    const refusedOnA = await post(a, shared);
    const refusedOnB = await post(b, shared);
    expect(refusedOnA.status).toBe(429);
    expect(refusedOnB.status).toBe(429);
    expect(refusedOnB.body).toMatchObject({ code: 'RATE_LIMITED' });
    expect(sandbox.received.length).toBe(beforeRefusals);
  });

  it('when Redis is unreachable at start, then the service starts, answers 201, reports degraded, and turns ready once Redis appears', async () => {
    const port = await freePort(); // nothing listens here
    const sandbox = await newSandbox();
    const target = await start({ REDIS_URL: `redis://127.0.0.1:${port}` }, sandbox);

    const response = await post(target, newUser());
    expect(response.status).toBe(201);
    expect(typeof response.body.biz_token).toBe('string');
    expect(sandbox.received.length).toBe(1);

    const ready = await readiness(target);
    expect(ready.httpStatus).toBe(200);
    expect(ready.body.status).toBe('degraded');
    expect(ready.body.checks.redis).toMatch(/unreachable/);
    await waitFor(
      () => logLinesMatching(target, /Redis unreachable/i).length > 0,
      2_000,
      'no log line about Redis being unreachable',
    );
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(logLinesMatching(target, /Redis unreachable/i)).toHaveLength(1);

    // And when a Redis appears there later, the service picks it up by itself. (This also lets the client
    // close cleanly: ioredis leaves a 2 s timer behind when it is closed while still reconnecting.)
    await startRedis(port);
    await waitFor(
      async () => (await readiness(target)).body.status === 'ready',
      5_000,
      '/readyz did not turn ready once Redis appeared',
    );
    expect((await readiness(target)).body.checks.redis).toBe('ok');
  });
});
