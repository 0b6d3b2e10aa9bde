import { spawn } from 'node:child_process';
import http from 'node:http';
import supertest from 'supertest';
import type { Sandbox } from '../src/sandbox/sandbox-server';
import { type ChildService, SERVER_ENTRY, startChildService, targetOf } from './helpers/child-service';
import {
  postToken,
  SANDBOX_KEY,
  SANDBOX_SECRET,
  signToken,
  startTestSandbox,
  TEST_JWT_SECRET,
  validForm,
} from './helpers/test-service';

/**
 * Contract section 5 (SIGTERM: stop accepting, finish in-flight requests, exit 0), on the
 * built service as a real child process against a slow sandbox in this test process.
 */

const opened: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const close of opened.splice(0).reverse()) await close();
});

async function sandboxWithLatency(latencyMs: number): Promise<Sandbox> {
  const sandbox = await startTestSandbox(latencyMs);
  opened.push(() => sandbox.close());
  return sandbox;
}

async function serviceAgainst(sandbox: Sandbox, env: Record<string, string> = {}): Promise<ChildService> {
  const child = await startChildService({
    FACEID_BASE_URL: sandbox.url,
    FACEID_API_KEY: SANDBOX_KEY,
    FACEID_API_SECRET: SANDBOX_SECRET,
    AUTH_JWT_SECRET: TEST_JWT_SECRET,
    SHUTDOWN_TIMEOUT_MS: '5000',
    ...env,
  });
  opened.push(async () => {
    if (child.process.exitCode === null && child.process.signalCode === null) child.process.kill('SIGKILL');
    await child.exited;
  });
  return child;
}

/** A token request to the child; resolves with the answer, or with the network error that cut it off. */
function requestToken(child: ChildService): Promise<supertest.Response | Error> {
  return postToken(targetOf(child)).then(
    (response) => response,
    (error: unknown) => (error instanceof Error ? error : new Error(String(error))),
  );
}

/** GET on a fresh connection (no keep-alive agent): its status, or the connection error's code. */
function freshGet(port: number, path: string): Promise<{ status?: number; body?: unknown; error?: string }> {
  return new Promise((resolve) => {
    const request = http.get({ host: '127.0.0.1', port, path, agent: false }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let body: unknown = text;
        try {
          body = JSON.parse(text) as unknown;
        } catch {
          // not JSON: kept as text
        }
        resolve({ status: response.statusCode, body });
      });
    });
    request.on('error', (error: NodeJS.ErrnoException) => resolve({ error: error.code ?? error.message }));
  });
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function waitUntil(condition: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await sleep(10);
  }
}

const logLines = (child: ChildService): Array<Record<string, unknown>> =>
  child
    .output()
    .split('\n')
    .filter((line) => line.length > 0)
    .map((line) => JSON.parse(line) as Record<string, unknown>);

describe('graceful shutdown of the real process', () => {
  test('when SIGTERM arrives during a slow FaceID call, then that request completes 201, new requests are refused, and the process exits 0', async () => {
    const sandbox = await sandboxWithLatency(1500);
    const child = await serviceAgainst(sandbox);
    expect((await freshGet(child.port, '/readyz')).status).toBe(200);

    const inFlight = requestToken(child);
    // SIGTERM 300 ms after the request reached FaceID (which takes 1500 ms to answer).
    await waitUntil(() => sandbox.received.length === 1, 3_000);
    await sleep(300);
    const signalledAt = Date.now();
    child.process.kill('SIGTERM');
    await waitUntil(() => child.output().includes('shutting down'), 2_000);

    // During the shutdown: not ready, or (the listener is closed) the connection is refused.
    const during = await freshGet(child.port, '/readyz');
    if (during.error === undefined) {
      expect(during.status).toBe(503);
      expect(during.body).toMatchObject({ status: 'not-ready', checks: { shutdown: 'shutting down' } });
    } else {
      expect(during.error).toBe('ECONNREFUSED');
    }
    // The listener closes as the shutdown begins: a new connection is refused outright.
    expect(await freshGet(child.port, '/healthz')).toEqual({ error: 'ECONNREFUSED' });

    const answer = await inFlight;
    expect(answer).not.toBeInstanceOf(Error);
    const response = answer as supertest.Response;
    expect({ status: response.status, body: response.body as unknown }).toMatchObject({
      status: 201,
      body: { biz_token: expect.any(String) },
    });
    expect(sandbox.received).toHaveLength(1);

    expect(await child.exited).toBe(0);
    expect(Date.now() - signalledAt).toBeLessThan(5_000);
    const messages = logLines(child).map((line) => String(line.msg));
    expect(messages.some((msg) => msg.includes('shutting down'))).toBe(true);
    expect(messages.some((msg) => msg === 'stopped')).toBe(true);
    // The request was logged (not lost to the exit), and finished before the service said it stopped.
    const lines = logLines(child);
    const requestLine = lines.find(
      (line) => line.request_id === response.headers['x-request-id'] && 'latency_ms' in line,
    );
    const stoppedLine = lines.find((line) => line.msg === 'stopped');
    expect(requestLine).toMatchObject({ route: '/v1/biz-tokens', code: 'OK', res: { statusCode: 201 } });
    expect(Date.parse(String(requestLine?.time))).toBeLessThanOrEqual(Date.parse(String(stoppedLine?.time)));
  }, 15_000);

  test('when the in-flight request came over a keep-alive connection, then the process exits as soon as it is answered, not at SHUTDOWN_TIMEOUT_MS', async () => {
    const sandbox = await sandboxWithLatency(800);
    const child = await serviceAgainst(sandbox, { SHUTDOWN_TIMEOUT_MS: '8000' });
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    opened.push(async () => agent.destroy());
    const form = validForm();
    let request = supertest(child.url)
      .post('/v1/biz-tokens')
      .agent(agent)
      .set('Authorization', `Bearer ${await signToken()}`);
    for (const [name, value] of Object.entries(form.fields)) request = request.field(name, value);
    for (const [name, bytes] of Object.entries(form.files))
      request = request.attach(name, bytes, { filename: `${name}.jpg`, contentType: 'image/jpeg' });
    const answer = request.then((response) => response);
    await sleep(300);
    const signalled = Date.now();
    child.process.kill('SIGTERM');
    expect((await answer).status).toBe(201);
    expect(await child.exited).toBe(0);
    // Without closing the pooled socket the drain would wait the whole 8 s.
    expect(Date.now() - signalled).toBeLessThan(3_000);
  });

  test('when SIGINT arrives on an idle service, then it stops and exits 0', async () => {
    const sandbox = await sandboxWithLatency(0);
    const child = await serviceAgainst(sandbox);
    const token = await requestToken(child);
    expect((token as supertest.Response).status).toBe(201);
    const signalledAt = Date.now();
    child.process.kill('SIGINT');
    expect(await child.exited).toBe(0);
    expect(Date.now() - signalledAt).toBeLessThan(2_000);
    const messages = logLines(child).map((line) => String(line.msg));
    expect(messages.some((msg) => msg.includes('shutting down'))).toBe(true);
    expect(messages).toContain('stopped');
  });

  test('when SIGTERM arrives and a FaceID call outlasts SHUTDOWN_TIMEOUT_MS=300, then the request is cut off and the process exits 0 within ~1.5 s', async () => {
    const sandbox = await sandboxWithLatency(5000);
    const child = await serviceAgainst(sandbox, { SHUTDOWN_TIMEOUT_MS: '300' });
    const inFlight = requestToken(child);
    await waitUntil(() => sandbox.received.length === 1, 3_000);
    const signalledAt = Date.now();
    child.process.kill('SIGTERM');
    const code = await child.exited;
    const tookMs = Date.now() - signalledAt;
    expect(code).toBe(0);
    expect(tookMs).toBeLessThan(1_500);
    const answer = await inFlight;
    // Cut off: the connection was closed without a token (no 201 can have been produced before FaceID answered).
    if (answer instanceof Error) expect(answer.message).toMatch(/socket hang up|ECONNRESET|aborted/i);
    else expect(answer.status).not.toBe(201);
    const messages = logLines(child).map((line) => String(line.msg));
    expect(messages.some((msg) => msg.includes('shutdown timeout'))).toBe(true);
    expect(messages).toContain('stopped');
  }, 15_000);

  test('when the process starts, then every stdout line is JSON and the start-up line shows the configuration with secrets masked', async () => {
    const sandbox = await sandboxWithLatency(0);
    const child = await serviceAgainst(sandbox);
    expect((await freshGet(child.port, '/healthz')).status).toBe(200);
    child.process.kill('SIGTERM');
    expect(await child.exited).toBe(0);
    const output = child.output();
    expect(() => logLines(child)).not.toThrow();
    const started = logLines(child).find((line) => line.msg === 'faceid-token-service listening');
    // The api_key only begins: enough to tell which account, not enough to use it.
    const keyStart = `${SANDBOX_KEY.slice(0, 4)}…`;
    expect(started).toMatchObject({
      level: 30,
      config: {
        faceid: { baseUrl: sandbox.url, apiKey: keyStart, apiSecret: 'set' },
        auth: { mode: 'jwt', jwtSecret: 'set' },
      },
    });
    for (const secret of [SANDBOX_KEY, SANDBOX_SECRET, TEST_JWT_SECRET]) expect(output).not.toContain(secret);
  });

  // The signal handlers must be in place before the service starts announcing itself: an orchestrator may
  // stop a pod that is still starting (e.g. waiting for Redis), and the 'listening' line is what tells it
  // (and startChildService) that the service is up.
  test('when SIGTERM arrives while the service is still starting (after its first log line), then it exits 0, not killed by the signal', async () => {
    // Without a FaceID key the service first starts its built-in sandbox and says so: that is the first line.
    // Three processes at once: the window before the handlers exist is short, and a busy CPU widens it.
    const outcomes = await Promise.all([0, 1, 2].map(() => signalAtFirstLine()));
    expect(outcomes).toEqual(outcomes.map(() => ({ code: 0, signal: null })));
  });
});

async function signalAtFirstLine(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  const child = spawn(process.execPath, [SERVER_ENTRY], {
    env: { PATH: process.env.PATH ?? '', NODE_ENV: 'test', PORT: '0', LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  opened.push(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  });
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => {
    output += chunk.toString('utf8');
    if (output.includes('\n') && !child.killed) child.kill('SIGTERM');
  });
  child.stderr.resume();
  return exited;
}
