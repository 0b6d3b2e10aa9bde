import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Redis } from 'ioredis';
import type supertest from 'supertest';
import { announceUpload } from './helpers/raw-request';
import {
  expectProblem,
  postToken,
  signToken,
  startTestSandbox,
  startTestService,
  type TestService,
  type TokenForm,
  uniquePrefix,
  validForm,
} from './helpers/test-service';

/**
 * The per-user rate limit and the operator budget: RATE_LIMIT_MAX per RATE_LIMIT_WINDOW_SECONDS per
 * user with the IETF RateLimit headers, 429 RATE_LIMITED with Retry-After, and FACEID_DAILY_BUDGET shared
 * through Redis. Every store kind runs the same tests: per-process memory and the shared Redis.
 */

const REDIS_URL = 'redis://127.0.0.1:6379';
/** One prefix for this file; every service below gets its own namespace under it. */
const FILE_PREFIX = uniquePrefix();
let namespaces = 0;
const freshPrefix = (): string => `${FILE_PREFIX}${++namespaces}:`;

const opened: TestService[] = [];
async function start(env: Record<string, string | undefined>, sandbox?: TestService['sandbox']): Promise<TestService> {
  const target = await startTestService(env, sandbox);
  opened.push(target);
  if (target.service.shared.redis !== undefined) await waitForRedis(target);
  return target;
}

/** ioredis connects in the background; the limits are only shared once it is ready. */
async function waitForRedis(target: TestService): Promise<void> {
  const deadline = Date.now() + 3_000;
  while (target.service.shared.state() !== 'ready') {
    if (Date.now() > deadline) throw new Error('the service did not reach Redis');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

afterAll(async () => {
  const sandboxes = new Set<TestService['sandbox']>();
  for (const target of opened) {
    await target.close();
    sandboxes.add(target.sandbox);
  }
  // Services started with a sandbox they did not create leave it open.
  await Promise.all([...sandboxes].map((sandbox) => sandbox.close().catch(() => undefined)));
  const redis = new Redis(REDIS_URL, { lazyConnect: true });
  try {
    await redis.connect();
    const keys = await redis.keys(`${FILE_PREFIX}*`);
    if (keys.length > 0) await redis.del(...keys);
  } finally {
    redis.disconnect();
  }
});

const newUser = (): string => `user-${randomUUID()}`;

async function post(
  target: TestService,
  sub: string,
  form: TokenForm = validForm(),
  headers: Record<string, string> = {},
): Promise<supertest.Response> {
  return postToken(target, form, { Authorization: `Bearer ${await signToken({ sub })}`, ...headers });
}

const badField = (): TokenForm => ({ ...validForm(), fields: { ...validForm().fields, liveness_timeout: '99' } });

/** `RateLimit: "per-user";r=<remaining>;t=<seconds>`, checked against what the window allows. */
function expectRateLimitHeaders(
  response: supertest.Response,
  max: number,
  windowSeconds: number,
  remaining: number,
): void {
  expect(response.headers['ratelimit-policy']).toBe(`"per-user";q=${max};w=${windowSeconds}`);
  const match = /^"per-user";r=(\d+);t=(\d+)$/.exec(String(response.headers.ratelimit));
  expect(match).not.toBeNull();
  expect(Number(match?.[1])).toBe(remaining);
  const reset = Number(match?.[2]);
  expect(reset).toBeGreaterThanOrEqual(1);
  expect(reset).toBeLessThanOrEqual(windowSeconds);
}

function expectRetryAfterWithin(response: supertest.Response, min: number, max: number): number {
  const text = String(response.headers['retry-after']);
  expect(text).toMatch(/^\d+$/);
  const seconds = Number(text);
  expect(seconds).toBeGreaterThanOrEqual(min);
  expect(seconds).toBeLessThanOrEqual(max);
  return seconds;
}

const STORES: Array<[string, Record<string, string | undefined>]> = [
  ['memory', { REDIS_URL: undefined }],
  ['redis', { REDIS_URL }],
];

describe.each(STORES)('per-user rate limit with the %s store', (_kind, storeEnv) => {
  let target: TestService;
  beforeAll(async () => {
    target = await start({
      ...storeEnv,
      REDIS_KEY_PREFIX: freshPrefix(),
      RATE_LIMIT_MAX: '3',
      RATE_LIMIT_WINDOW_SECONDS: '60',
    });
  });

  it('when a user sends 4 requests in one window, then 3 get 201 with the RateLimit headers and the 4th gets 429 RATE_LIMITED with Retry-After and no upstream call', async () => {
    const user = newUser();
    for (const remaining of [2, 1, 0]) {
      const response = await post(target, user);
      expect(response.status).toBe(201);
      expect(typeof response.body.biz_token).toBe('string');
      expectRateLimitHeaders(response, 3, 60, remaining);
    }
    const before = target.sandbox.received.length;
    const refused = await post(target, user);
    expectProblem(refused, 429, 'RATE_LIMITED');
    expectRetryAfterWithin(refused, 1, 60);
    expectRateLimitHeaders(refused, 3, 60, 0);
    expect(target.sandbox.received.length).toBe(before);
  });

  it('when one user has spent the limit, then another user (other JWT sub) still gets all 3 requests', async () => {
    const spender = newUser();
    for (let i = 0; i < 3; i++) expect((await post(target, spender)).status).toBe(201);
    expect((await post(target, spender)).status).toBe(429);

    const other = newUser();
    for (const remaining of [2, 1, 0]) {
      const response = await post(target, other);
      expect(response.status).toBe(201);
      expectRateLimitHeaders(response, 3, 60, remaining);
    }
    expect((await post(target, other)).status).toBe(429);
  });

  it('when unauthenticated requests (no token, wrong signature, expired) claim a user, then they get 401 and that user still gets all 3 requests', async () => {
    const user = newUser();
    const before = target.sandbox.received.length;
    const forged = await signToken({ sub: user }, 'another-secret-that-is-long-enough-0123456789');
    const expired = await signToken({ sub: user, exp: Math.floor(Date.now() / 1000) - 600 });
    for (const authorization of [
      '',
      `Bearer ${forged}`,
      `Bearer ${expired}`,
      `Bearer ${forged}`,
      `Bearer ${expired}`,
    ]) {
      const response = await postToken(target, validForm(), { Authorization: authorization });
      expectProblem(response, 401, 'UNAUTHENTICATED');
      // The policy is the same for everyone, so even a 401 can say it (CONTRACT section 3: all answers).
      expect(response.headers['ratelimit-policy']).toBe('"per-user";q=3;w=60');
    }
    expect(target.sandbox.received.length).toBe(before);

    for (const remaining of [2, 1, 0]) {
      const response = await post(target, user);
      expect(response.status).toBe(201);
      expectRateLimitHeaders(response, 3, 60, remaining);
    }
    expect((await post(target, user)).status).toBe(429);
  });

  it("when a request is refused locally with 400 (bad field), then it counts against the user's limit and says so in its RateLimit header", async () => {
    const user = newUser();
    const before = target.sandbox.received.length;
    const rejected = await post(target, user, badField());
    expectProblem(rejected, 400, 'BAD_ARGUMENTS', 'liveness_timeout');
    expectRateLimitHeaders(rejected, 3, 60, 2);
    expect(target.sandbox.received.length).toBe(before);

    // The service counts every authenticated request, so only two of the three remain.
    expect((await post(target, user)).status).toBe(201);
    expect((await post(target, user)).status).toBe(201);
    const refused = await post(target, user);
    expectProblem(refused, 429, 'RATE_LIMITED');
    expect(target.sandbox.received.length).toBe(before + 2);
  });

  it('when an authenticated request is refused for a bad Idempotency-Key, then the 400 carries the RateLimit headers and counts like any local 400', async () => {
    const user = newUser();
    const refused = await post(target, user, validForm(), { 'Idempotency-Key': 'k'.repeat(256) });
    expectProblem(refused, 400, 'BAD_ARGUMENTS', 'Idempotency-Key');
    // CONTRACT section 3: all answers of the endpoint carry the IETF RateLimit headers.
    expectRateLimitHeaders(refused, 3, 60, 2);
  });

  describe('with a 1 s window', () => {
    let short: TestService;
    beforeAll(async () => {
      short = await start({
        ...storeEnv,
        REDIS_KEY_PREFIX: freshPrefix(),
        RATE_LIMIT_MAX: '1',
        RATE_LIMIT_WINDOW_SECONDS: '1',
      });
    });

    it('when the window has passed, then the user who was refused is allowed again', async () => {
      const user = newUser();
      const first = await post(short, user);
      expect(first.status).toBe(201);
      expectRateLimitHeaders(first, 1, 1, 0);
      const refused = await post(short, user);
      expectProblem(refused, 429, 'RATE_LIMITED');
      expectRetryAfterWithin(refused, 1, 1);

      await new Promise((resolve) => setTimeout(resolve, 1_100));
      const again = await post(short, user);
      expect(again.status).toBe(201);
      expectRateLimitHeaders(again, 1, 1, 0);
    });
  });
});

describe('rate limit under AUTH_MODE=none without a trusted proxy', () => {
  let target: TestService;
  beforeAll(async () => {
    target = await start({ AUTH_MODE: 'none', AUTH_JWT_SECRET: undefined, RATE_LIMIT_MAX: '2', TRUST_PROXY: 'false' });
  });

  it("when every request forges another X-Forwarded-For, then they all spend the one real client IP's budget", async () => {
    const form = (): TokenForm => ({ ...validForm(), fields: { ...validForm().fields, uuid: 'dev-user-1' } });
    const forwarded = ['203.0.113.1', '203.0.113.2', '198.51.100.7'];
    expect((await postToken(target, form(), { Authorization: '', 'X-Forwarded-For': forwarded[0] ?? '' })).status).toBe(
      201,
    );
    expect((await postToken(target, form(), { Authorization: '', 'X-Forwarded-For': forwarded[1] ?? '' })).status).toBe(
      201,
    );
    const before = target.sandbox.received.length;
    const refused = await postToken(target, form(), { Authorization: '', 'X-Forwarded-For': forwarded[2] ?? '' });
    expectProblem(refused, 429, 'RATE_LIMITED');
    expect(target.sandbox.received.length).toBe(before);
  });
});

describe('FACEID_DAILY_BUDGET through Redis', () => {
  /** Seconds from now to the next UTC midnight. */
  const secondsToUtcMidnight = (): number => {
    const now = new Date();
    return (Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() + 1) - now.getTime()) / 1000;
  };
  const budgetWarnings = (target: TestService): Array<Record<string, unknown>> =>
    target.log.lines().filter((line) => typeof line.msg === 'string' && line.msg.includes('FACEID_DAILY_BUDGET spent'));

  it("when the day's 2 upstream calls are spent, then further requests get 503 UPSTREAM_BUSY with Retry-After to UTC midnight, no upstream call, and one warn line; local 400s spend nothing", async () => {
    const target = await start({ REDIS_URL, REDIS_KEY_PREFIX: freshPrefix(), FACEID_DAILY_BUDGET: '2' });

    // Refused locally before any upstream call: these must not spend the budget.
    for (let i = 0; i < 3; i++)
      expectProblem(await post(target, newUser(), badField()), 400, 'BAD_ARGUMENTS', 'liveness_timeout');
    expect(target.sandbox.received.length).toBe(0);

    expect((await post(target, newUser())).status).toBe(201);
    expect((await post(target, newUser())).status).toBe(201);
    expect(target.sandbox.received.length).toBe(2);

    for (let i = 0; i < 3; i++) {
      const refused = await post(target, newUser());
      expectProblem(refused, 503, 'UPSTREAM_BUSY');
      const expected = secondsToUtcMidnight();
      expectRetryAfterWithin(refused, Math.max(1, Math.floor(expected - 5)), Math.ceil(expected + 5));
    }
    expect(target.sandbox.received.length).toBe(2);

    const warnings = budgetWarnings(target);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]?.level).toBe(40);
  });

  it('when an Idempotency-Key is replayed, then the replay spends none of the daily budget', async () => {
    const target = await start({ REDIS_URL, REDIS_KEY_PREFIX: freshPrefix(), FACEID_DAILY_BUDGET: '2' });
    const user = newUser();
    const first = await post(target, user, validForm(), { 'Idempotency-Key': 'budget-replay' });
    expect(first.status).toBe(201);
    for (let i = 0; i < 2; i++) {
      const replay = await post(target, user, validForm(), { 'Idempotency-Key': 'budget-replay' });
      expect(replay.status).toBe(201);
      expect(replay.headers['idempotent-replayed']).toBe('true');
    }
    expect((await post(target, newUser())).status).toBe(201);
    expectProblem(await post(target, newUser()), 503, 'UPSTREAM_BUSY');
    expect(target.sandbox.received.length).toBe(2);
  });

  it('when two instances share one Redis prefix, then they share one budget: a spends 1, b spends 1, the 3rd on a is refused', async () => {
    const sandbox = await startTestSandbox();
    const env = { REDIS_URL, REDIS_KEY_PREFIX: freshPrefix(), FACEID_DAILY_BUDGET: '2' };
    const a = await start(env, sandbox);
    const b = await start(env, sandbox);

    expect((await post(a, newUser())).status).toBe(201);
    expect((await post(b, newUser())).status).toBe(201);
    expectProblem(await post(a, newUser()), 503, 'UPSTREAM_BUSY');
    expectProblem(await post(b, newUser()), 503, 'UPSTREAM_BUSY');
    expect(sandbox.received.length).toBe(2);
    expect(budgetWarnings(a)).toHaveLength(1);
    expect(budgetWarnings(b)).toHaveLength(1);
  });
});

describe('a spent caller with an Idempotency-Key', () => {
  test('when the key holds no answer, then the 429 comes before the body is read', async () => {
    const target = await startTestService({ RATE_LIMIT_MAX: '1' });
    const server = createServer(target.service.app).listen(0);
    try {
      await new Promise((resolve) => server.once('listening', resolve));
      const token = await signToken({ sub: `spent-${Date.now()}` });
      expect((await postToken(target, validForm(), { Authorization: `Bearer ${token}` })).status).toBe(201);
      // Announces 5 MB and sends none of it: only an answer that needs no body can arrive.
      const { status } = await announceUpload(
        (server.address() as AddressInfo).port,
        { Authorization: `Bearer ${token}`, 'Idempotency-Key': 'never-used-before' },
        5 * 1024 * 1024,
      );
      expect(status).toBe(429);
    } finally {
      server.closeAllConnections();
      server.close();
      await target.close();
    }
  });
});
