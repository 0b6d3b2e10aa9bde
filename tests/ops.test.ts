import { createHmac, randomUUID } from 'node:crypto';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import supertest from 'supertest';
import { loadConfig } from '../src/config/load-config';
import { createLogger } from '../src/logging/logger';
import { SERVER_TIMEOUTS, startServer } from '../src/server';
import { type ChildService, startChildService } from './helpers/child-service';
import { freePort } from './helpers/free-port';
import {
  captureLog,
  cleanupAfter,
  expectProblem,
  postToken,
  SANDBOX_KEY,
  SANDBOX_SECRET,
  signToken,
  startTestSandbox,
  TEST_JWT_SECRET,
  type TestService,
  validForm,
  validIdcardForm,
} from './helpers/test-service';

/**
 * From the outside: health and readiness, Prometheus metrics with bounded labels,
 * security headers, CORS, the docs page and the server's own timeouts.
 * @see ../shared/CONTRACT.md section 5
 */

const { start, defer } = cleanupAfter(afterAll);

async function startChild(env: Record<string, string>): Promise<ChildService> {
  const child = await startChildService(env);
  defer(() => child.stop('SIGKILL'));
  return child;
}

/** A request sent exactly as written (supertest and URL parsing would normalize `..`). */
function rawGet(app: http.RequestListener, path: string): Promise<number> {
  const server = http.createServer(app);
  return new Promise((resolve, reject) => {
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      const request = http.request({ host: '127.0.0.1', port, path, method: 'GET', agent: false }, (response) => {
        response.resume();
        response.on('end', () => server.close(() => resolve(response.statusCode ?? 0)));
      });
      request.on('error', (error) => server.close(() => reject(error)));
      request.end();
    });
  });
}

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** The Prometheus text format, one sample per line. */
function parseMetrics(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line.length === 0 || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)/.exec(line);
    if (match === null) throw new Error(`not a sample: ${line}`);
    const labels: Record<string, string> = {};
    for (const label of (match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g))
      labels[label[1]!] = label[2]!;
    samples.push({ name: match[1]!, labels, value: Number(match[3]) });
  }
  return samples;
}

function sampleValue(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const matching = samples.filter(
    (sample) => sample.name === name && Object.entries(labels).every(([key, value]) => sample.labels[key] === value),
  );
  return matching.length === 0 ? undefined : matching.reduce((sum, sample) => sum + sample.value, 0);
}

async function scrape(target: TestService): Promise<{ text: string; samples: Sample[] }> {
  const response = await target.http().get('/metrics');
  expect(response.status).toBe(200);
  expect(response.headers['content-type']).toMatch(/^text\/plain/);
  return { text: response.text, samples: parseMetrics(response.text) };
}

const pseudonymOf = (target: TestService, sub: string): string =>
  createHmac('sha256', target.config.auth.uuidSalt).update(`sub:${sub}`).digest('hex');

// ---------------------------------------------------------------------------------------------------------

describe('health and readiness', () => {
  let target: TestService;
  beforeAll(async () => {
    target = await start();
  });

  test('when GET /healthz, then it answers 200 JSON', async () => {
    const response = await target.http().get('/healthz');
    expect(response.status).toBe(200);
    expect(response.headers['content-type']).toMatch(/^application\/json/);
    expect(response.body).toEqual({ status: 'ok' });
  });

  test('when GET /readyz without REDIS_URL, then it answers 200 ready and says Redis is not configured', async () => {
    const response = await target.http().get('/readyz');
    expect(response.status).toBe(200);
    expect(response.body).toMatchObject({ status: 'ready', checks: { config: 'ok' } });
    const checks = (response.body as { checks: Record<string, string> }).checks;
    expect(checks.redis).toMatch(/not configured/);
  });

  test('when a route does not exist, then it answers 404 problem+json NOT_FOUND', async () => {
    const response = await target.http().get('/v1/nothing-here');
    expectProblem(response, 404, 'NOT_FOUND');
  });
});

describe('GET /metrics', () => {
  let target: TestService;
  const sub = `metrics-sub-${randomUUID()}`;
  beforeAll(async () => {
    target = await start();
  });

  test('when a token is issued and one is refused, then the duration histogram has the route label and the outcome counter both codes', async () => {
    const before = (await scrape(target)).samples;
    const ok = await postToken(target, validForm(), { Authorization: `Bearer ${await signToken({ sub })}` });
    expect(ok.status).toBe(201);
    const bad = await postToken(
      target,
      { fields: { ...validForm().fields, liveness_timeout: '99' }, files: validForm().files },
      { Authorization: `Bearer ${await signToken({ sub })}` },
    );
    expectProblem(bad, 400, 'BAD_ARGUMENTS');

    const { samples } = await scrape(target);
    const count = (labels: Record<string, string>): number | undefined =>
      sampleValue(samples, 'http_request_duration_seconds_count', labels);
    expect(count({ route: '/v1/biz-tokens', method: 'POST', status: '201' })).toBe(
      (sampleValue(before, 'http_request_duration_seconds_count', { route: '/v1/biz-tokens', status: '201' }) ?? 0) + 1,
    );
    expect(count({ route: '/v1/biz-tokens', method: 'POST', status: '400' })).toBe(
      (sampleValue(before, 'http_request_duration_seconds_count', { route: '/v1/biz-tokens', status: '400' }) ?? 0) + 1,
    );
    expect(
      sampleValue(samples, 'http_request_duration_seconds_bucket', {
        route: '/v1/biz-tokens',
        status: '201',
        le: '+Inf',
      }),
    ).toBeGreaterThanOrEqual(1);
    expect(sampleValue(samples, 'biz_token_outcomes_total', { code: 'OK' })).toBe(
      (sampleValue(before, 'biz_token_outcomes_total', { code: 'OK' }) ?? 0) + 1,
    );
    expect(sampleValue(samples, 'biz_token_outcomes_total', { code: 'BAD_ARGUMENTS' })).toBe(
      (sampleValue(before, 'biz_token_outcomes_total', { code: 'BAD_ARGUMENTS' }) ?? 0) + 1,
    );
    // The FaceID exchange of the 201 was timed; the refused request never went upstream.
    expect(sampleValue(samples, 'faceid_upstream_duration_seconds_count')).toBe(
      (sampleValue(before, 'faceid_upstream_duration_seconds_count') ?? 0) + 1,
    );
    expect(sampleValue(samples, 'faceid_upstream_duration_seconds_bucket', { le: '+Inf' })).toBeGreaterThanOrEqual(1);
  });

  test('when scraped, then default process metrics and the in-flight gauges are there (this scrape itself is the one request in flight)', async () => {
    const { samples } = await scrape(target);
    expect(sampleValue(samples, 'process_cpu_seconds_total')).toBeGreaterThan(0);
    expect(sampleValue(samples, 'faceid_calls_in_flight')).toBe(0);
    expect(sampleValue(samples, 'http_requests_in_flight')).toBe(1);
  });

  test('when a FaceID call is slow, then faceid_calls_in_flight and http_requests_in_flight count it while it lasts', async () => {
    const receivedBefore = target.sandbox.received.length;
    const pending = postToken(target, {
      fields: { ...validForm().fields, biz_no: 'sandbox:latency=800' },
      files: validForm().files,
    });
    const deadline = Date.now() + 3_000;
    while (target.sandbox.received.length === receivedBefore && Date.now() < deadline)
      await new Promise((resolve) => setTimeout(resolve, 20));
    const { samples } = await scrape(target);
    expect(sampleValue(samples, 'faceid_calls_in_flight')).toBe(1);
    expect(sampleValue(samples, 'http_requests_in_flight')).toBe(2);
    expect((await pending).status).toBe(201);
    const after = (await scrape(target)).samples;
    expect(sampleValue(after, 'faceid_calls_in_flight')).toBe(0);
    expect(sampleValue(after, 'http_requests_in_flight')).toBe(1);
  });

  test('when the same Idempotency-Key is replayed, then idempotent_replays_total goes up by one', async () => {
    const before = sampleValue((await scrape(target)).samples, 'idempotent_replays_total') ?? 0;
    const key = `replay-${randomUUID()}`;
    const first = await postToken(target, validIdcardForm(), { 'Idempotency-Key': key });
    const second = await postToken(target, validIdcardForm(), { 'Idempotency-Key': key });
    expect([first.status, second.status]).toEqual([201, 201]);
    expect(second.headers['idempotent-replayed']).toBe('true');
    expect(sampleValue((await scrape(target)).samples, 'idempotent_replays_total')).toBe(before + 1);
  });

  test('when junk paths and a user were seen, then no label value holds a user id, the sub or a raw path', async () => {
    expect(await rawGet(target.service.app, '/v1/../etc/passwd?x=1')).toBe(404);
    expect(await rawGet(target.service.app, '/nothing/123')).toBe(404);
    expect((await target.http().get(`/v1/biz-tokens/${sub}`)).status).toBe(404);
    const { text, samples } = await scrape(target);
    expect(text).not.toContain('passwd');
    expect(text).not.toContain('nothing');
    expect(text).not.toContain(sub);
    expect(text).not.toContain(pseudonymOf(target, sub));
    const labelValues = samples.flatMap((sample) => Object.values(sample.labels));
    expect(
      labelValues.filter(
        (value) =>
          value.includes('123') || value.includes('/etc') || value.includes('..') || /[0-9a-f]{32}/.test(value),
      ),
    ).toEqual([]);
    // The junk was still counted, under a bounded route value.
    const routes = new Set(
      samples
        .filter((sample) => sample.name === 'http_request_duration_seconds_count')
        .map((sample) => sample.labels.route),
    );
    expect([...routes].every((route) => route !== undefined && route.length <= 40)).toBe(true);
    expect(sampleValue(samples, 'http_request_duration_seconds_count', { status: '404' })).toBeGreaterThanOrEqual(3);
  });
});

describe('rate-limit metric', () => {
  test('when a user spends RATE_LIMIT_MAX=1, then the next request is 429 RATE_LIMITED and rate_limit_rejections_total goes up by one', async () => {
    const target = await start({ RATE_LIMIT_MAX: '1' });
    const before = sampleValue((await scrape(target)).samples, 'rate_limit_rejections_total') ?? 0;
    expect((await postToken(target)).status).toBe(201);
    const refused = await postToken(target);
    expectProblem(refused, 429, 'RATE_LIMITED');
    expect(refused.headers['retry-after']).toMatch(/^\d+$/);
    const { samples } = await scrape(target);
    expect(sampleValue(samples, 'rate_limit_rejections_total')).toBe(before + 1);
    expect(sampleValue(samples, 'biz_token_outcomes_total', { code: 'RATE_LIMITED' })).toBe(1);
  });
});

describe('METRICS_PORT', () => {
  test('when METRICS_PORT is set, then /metrics is served there and the public port answers 404 NOT_FOUND for it', async () => {
    const metricsPort = await freePort();
    const child = await startChild({ METRICS_PORT: String(metricsPort) });
    const onMain = await supertest(child.url).get('/metrics');
    expectProblem(onMain, 404, 'NOT_FOUND');
    expect(onMain.text).not.toContain('process_cpu_seconds_total');
    const onMetrics = await supertest(`http://127.0.0.1:${metricsPort}`).get('/metrics');
    expect(onMetrics.status).toBe(200);
    expect(onMetrics.text).toContain('process_cpu_seconds_total');
    expect(onMetrics.text).toContain('http_request_duration_seconds');
    // The request to the public port was measured by the same registry.
    expect(
      sampleValue(parseMetrics(onMetrics.text), 'http_request_duration_seconds_count', { status: '404' }),
    ).toBeGreaterThanOrEqual(1);
  });
});

describe('security headers and CORS', () => {
  let closed: TestService;
  let open: TestService;
  beforeAll(async () => {
    closed = await start();
    open = await start({ CORS_ORIGINS: 'https://app.example' });
  });

  test.each([
    ['GET /healthz', (t: TestService) => t.http().get('/healthz')],
    ['a refused token request', (t: TestService) => t.http().post('/v1/biz-tokens')],
    ['an unknown route', (t: TestService) => t.http().get('/no/such/route')],
  ])('when %s is answered, then there is no X-Powered-By and helmet headers are present', async (_what, send) => {
    const response = await send(closed);
    expect(response.headers['x-powered-by']).toBeUndefined();
    expect(response.headers['x-content-type-options']).toBe('nosniff');
    expect(response.headers['content-security-policy']).toMatch(/default-src 'self'/);
    expect(response.headers['strict-transport-security']).toBeDefined();
    expect(response.headers['x-frame-options']).toBeDefined();
  });

  test('when CORS_ORIGINS is unset, then a cross-origin request or preflight gets no Access-Control-Allow-Origin', async () => {
    const simple = await closed.http().get('/healthz').set('Origin', 'https://app.example');
    expect(simple.headers['access-control-allow-origin']).toBeUndefined();
    const preflight = await closed
      .http()
      .options('/v1/biz-tokens')
      .set('Origin', 'https://app.example')
      .set('Access-Control-Request-Method', 'POST')
      .set('Access-Control-Request-Headers', 'authorization,idempotency-key');
    expect(preflight.headers['access-control-allow-origin']).toBeUndefined();
    expect(preflight.headers['access-control-allow-methods']).toBeUndefined();
  });

  test('when CORS_ORIGINS=https://app.example, then its preflight is allowed with the auth headers and exposes X-Request-Id and RateLimit', async () => {
    const preflight = await open
      .http()
      .options('/v1/biz-tokens')
      .set('Origin', 'https://app.example')
      .set('Access-Control-Request-Method', 'POST')
      .set('Access-Control-Request-Headers', 'authorization,idempotency-key,x-request-id');
    expect(preflight.status).toBeGreaterThanOrEqual(200);
    expect(preflight.status).toBeLessThan(300);
    expect(preflight.headers['access-control-allow-origin']).toBe('https://app.example');
    expect(preflight.headers['access-control-allow-methods']).toMatch(/POST/);
    const allowed = String(preflight.headers['access-control-allow-headers']).toLowerCase();
    for (const header of ['authorization', 'idempotency-key', 'x-request-id']) expect(allowed).toContain(header);
    const exposed = String(preflight.headers['access-control-expose-headers'])
      .toLowerCase()
      .split(/\s*,\s*/);
    for (const header of ['x-request-id', 'ratelimit', 'ratelimit-policy', 'retry-after'])
      expect(exposed).toContain(header);
  });

  test('when CORS_ORIGINS=https://app.example, then a real POST from it carries the CORS headers and exposes X-Request-Id and RateLimit', async () => {
    const response = await postToken(open, validForm(), { Origin: 'https://app.example' });
    expect(response.status).toBe(201);
    expect(response.headers['access-control-allow-origin']).toBe('https://app.example');
    const exposed = String(response.headers['access-control-expose-headers'])
      .toLowerCase()
      .split(/\s*,\s*/);
    for (const header of ['x-request-id', 'ratelimit', 'ratelimit-policy']) expect(exposed).toContain(header);
    expect(response.headers.ratelimit).toBeDefined();
  });

  test('when CORS_ORIGINS=https://app.example, then another origin gets no Access-Control-Allow-Origin', async () => {
    const preflight = await open
      .http()
      .options('/v1/biz-tokens')
      .set('Origin', 'https://evil.example')
      .set('Access-Control-Request-Method', 'POST');
    expect(preflight.headers['access-control-allow-origin']).toBeUndefined();
    const simple = await open.http().get('/healthz').set('Origin', 'https://app.example.evil.example');
    expect(simple.headers['access-control-allow-origin']).toBeUndefined();
  });
});

describe('API docs', () => {
  test('when GET /docs, then an HTML page loads the pinned Swagger UI bundle and init script, which are served', async () => {
    const target = await start();
    const page = await target.http().get('/docs');
    expect(page.status).toBe(200);
    expect(page.headers['content-type']).toMatch(/^text\/html/);
    expect(page.text).toContain('/docs/assets/swagger-ui-bundle.js');
    expect(page.text).toContain('/docs/init.js');
    const bundle = await target.http().get('/docs/assets/swagger-ui-bundle.js');
    expect(bundle.status).toBe(200);
    expect(bundle.headers['content-type']).toMatch(/javascript/);
    expect(bundle.text.length).toBeGreaterThan(100_000);
    const css = await target.http().get('/docs/assets/swagger-ui.css');
    expect(css.status).toBe(200);
    const init = await target.http().get('/docs/init.js');
    expect(init.status).toBe(200);
    expect(init.headers['content-type']).toMatch(/javascript/);
    expect(init.text).toContain('/openapi.json');
  });

  test('when DOCS_ENABLED=false, then /docs and its assets are 404 NOT_FOUND', async () => {
    const target = await start({ DOCS_ENABLED: 'false' });
    expectProblem(await target.http().get('/docs'), 404, 'NOT_FOUND');
    expectProblem(await target.http().get('/docs/assets/swagger-ui-bundle.js'), 404, 'NOT_FOUND');
    expectProblem(await target.http().get('/docs/init.js'), 404, 'NOT_FOUND');
    // The machine-readable document stays.
    expect((await target.http().get('/openapi.json')).status).toBe(200);
  });
});

describe('server timeouts against slow clients', () => {
  /** The http.Server instances startServer creates, observed (not replaced) through a call-through spy. */
  async function serversOfStartServer(): Promise<http.Server[]> {
    const sandbox = await startTestSandbox();
    defer(() => sandbox.close());
    const spy = jest.spyOn(http, 'createServer');
    try {
      const config = loadConfig({
        NODE_ENV: 'test',
        PORT: '0',
        METRICS_PORT: String(await freePort()),
        AUTH_JWT_SECRET: TEST_JWT_SECRET,
        FACEID_BASE_URL: sandbox.url,
        FACEID_API_KEY: SANDBOX_KEY,
        FACEID_API_SECRET: SANDBOX_SECRET,
      });
      const running = await startServer(config, createLogger('silent', captureLog().destination));
      defer(() => running.stop());
      return spy.mock.results.map((result) => result.value as http.Server);
    } finally {
      spy.mockRestore();
    }
  }

  test('when startServer listens, then both servers cut off headers after 15 s, requests after 120 s and idle keep-alive after 65 s', async () => {
    const servers = await serversOfStartServer();
    expect(servers.length).toBe(2);
    for (const server of servers) {
      // The values the README promises, written out: a changed constant must fail here, not pass along.
      expect({
        headers: server.headersTimeout,
        request: server.requestTimeout,
        keepAlive: server.keepAliveTimeout,
      }).toEqual({
        headers: 15_000,
        request: 120_000,
        keepAlive: 65_000,
      });
    }
  });

  // Node enforces headersTimeout and requestTimeout only when it checks its connections, every
  // `connectionsCheckingInterval` (30 s by default): a client that stalls its headers is cut off after
  // 30 s or more, not after headersTimeout. Checked on the server's settings because waiting for it would
  // cost the suite 15 to 45 s; the behavioural test below runs with RUN_SLOW_TESTS=1.
  test('when a client stalls its headers, then the server checks often enough to cut it off within headersTimeout + 2 s', async () => {
    const servers = await serversOfStartServer();
    expect(servers.length).toBeGreaterThan(0);
    for (const server of servers) {
      const interval =
        (server as http.Server & { connectionsCheckingInterval?: number }).connectionsCheckingInterval ?? 30_000;
      expect(interval).toBeLessThanOrEqual(2_000);
    }
  });

  const slowTest = process.env.RUN_SLOW_TESTS === '1' ? test : test.skip;
  slowTest(
    'when a real client sends only part of its headers and then nothing, then the service closes the socket within headersTimeout + 3 s',
    async () => {
      const child = await startChild({});
      const socket = net.connect(child.port, '127.0.0.1');
      await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
      const started = Date.now();
      socket.write('POST /v1/biz-tokens HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Partial: ');
      socket.resume();
      const closedAfter = await new Promise<number>((resolve) =>
        socket.once('close', () => resolve(Date.now() - started)),
      );
      expect(closedAfter).toBeGreaterThanOrEqual(SERVER_TIMEOUTS.headersTimeoutMs - 1_000);
      expect(closedAfter).toBeLessThanOrEqual(SERVER_TIMEOUTS.headersTimeoutMs + 3_000);
    },
    60_000,
  );
});

describe('the FaceID result counter', () => {
  test("when FaceID answers a token, a client error and nothing in time, then faceid_results_total counts each by FaceID's own code", async () => {
    const target = await start({ FACEID_TIMEOUT_MS: '300', FACEID_MAX_RETRIES: '0' });
    const count = async (result: string): Promise<number> =>
      Number(
        new RegExp(`^faceid_results_total\\{result="${result}"\\} (\\d+)$`, 'm').exec(
          (await target.http().get('/metrics')).text,
        )?.[1] ?? 0,
      );
    const withBizNo = (bizNo: string) => ({ ...validForm(), fields: { ...validForm().fields, biz_no: bizNo } });
    expect((await postToken(target, validForm())).status).toBe(201);
    expect((await postToken(target, withBizNo('sandbox:NO_FACE_FOUND'))).status).toBe(400);
    expect((await postToken(target, withBizNo('sandbox:HANG'))).status).toBe(504);
    expect(await count('OK')).toBe(1);
    expect(await count('NO_FACE_FOUND')).toBe(1);
    expect(await count('TIMEOUT')).toBe(1);
  });
});
