import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import http, { type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Redis } from 'ioredis';
import { ConfigError, loadConfig } from '../src/config/load-config';
import type { Sandbox, WebhookDelivery } from '../src/sandbox/sandbox-server';
import {
  cleanupAfter,
  startTestSandbox,
  startTestService,
  type TestService,
  uniquePrefix,
  validForm,
  validIdcardForm,
} from './helpers/test-service';
import { bearer, DATA_FIELDS, getVerification, VERIFICATION_ID, verifyOnce } from './helpers/verification';

/**
 * CONTRACT section 7.3, webhooks to the operator's backend: Standard Webhooks signatures checked by a
 * verifier written here (not the library the service signs with), the body's shape, retries until the
 * receiver takes it (in the process and in Redis), giving up, surviving the restart of every instance, and
 * the configuration's refusals.
 */

const REDIS_URL = 'redis://127.0.0.1:6379';
/** `whsec_` + base64 of 32 random bytes, as an operator would generate it. */
const SECRET = `whsec_${randomBytes(32).toString('base64')}`;
const WEBHOOK_PATH = '/sandbox/webhooks';
const ISO_8601 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;

// ---------------------------------------------------------------------------------------------------------
// An independent Standard Webhooks verifier: node:crypto only, from the specification's text.

/** `v1,` + base64(HMAC-SHA256(base64-decoded secret after `whsec_`, `${id}.${timestamp}.${body}`)). */
function expectedSignature(secret: string, id: string, timestamp: string, body: Buffer | string): string {
  if (!secret.startsWith('whsec_')) throw new Error('a Standard Webhooks secret starts with whsec_');
  const key = Buffer.from(secret.slice('whsec_'.length), 'base64');
  const mac = createHmac('sha256', key).update(`${id}.${timestamp}.`).update(body).digest('base64');
  return `v1,${mac}`;
}

/** The signature header may list several space-separated signatures; one matching `v1` is enough. */
function signatureHolds(secret: string, id: string, timestamp: string, body: Buffer | string, header: string): boolean {
  const expected = Buffer.from(expectedSignature(secret, id, timestamp, body));
  return header.split(' ').some((candidate) => {
    const given = Buffer.from(candidate);
    return given.length === expected.length && timingSafeEqual(given, expected);
  });
}

// ---------------------------------------------------------------------------------------------------------
// Receivers: a raw one (keeps the exact bytes, for the independent check) and the sandbox's sink.

interface RawDelivery {
  headers: IncomingHttpHeaders;
  body: Buffer;
  receivedAtMs: number;
}

async function startRawReceiver(): Promise<{ url: string; received: RawDelivery[]; close: () => Promise<void> }> {
  const received: RawDelivery[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      received.push({ headers: req.headers, body: Buffer.concat(chunks), receivedAtMs: Date.now() });
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/hooks/faceid`,
    received,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

const startWebhookSandbox = (): Promise<Sandbox> => startTestSandbox(0, SECRET);

// ---------------------------------------------------------------------------------------------------------
// Small tools.

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `read` until `done` holds or the time is up; returns the last value read (the test then asserts on it). */
async function eventually<T>(read: () => T | Promise<T>, done: (value: T) => boolean, timeoutMs = 8_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await read();
    if (done(value) || Date.now() > deadline) return value;
    await sleep(50);
  }
}

/** Standard Webhooks' `webhook-id` of a verification: `msg_` + the ULID of `vf_<ULID>`. */
const webhookIdOf = (verificationId: string): string => `msg_${verificationId.slice('vf_'.length)}`;

/** The value of one sample of a Prometheus metric as /metrics shows it; undefined when absent. */
async function metricValue(target: TestService, name: string, labels = ''): Promise<number | undefined> {
  const response = await target.http().get('/metrics');
  expect(response.status).toBe(200);
  const sample = labels === '' ? name : `${name}{${labels}}`;
  const line = response.text.split('\n').find((text) => text.startsWith(`${sample} `));
  return line === undefined ? undefined : Number(line.slice(sample.length + 1));
}

async function deliveryCounts(target: TestService): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (const outcome of ['delivered', 'retrying', 'gave_up']) {
    counts[outcome] = (await metricValue(target, 'webhook_deliveries_total', `outcome="${outcome}"`)) ?? 0;
  }
  return counts;
}

async function waitUntilRedisReady(target: TestService): Promise<void> {
  const body = await eventually(
    async () => (await target.http().get('/readyz')).body as { checks?: { redis?: string } },
    (answer) => answer.checks?.redis === 'ok',
    5_000,
  );
  expect(body.checks?.redis).toBe('ok');
}

/** Every key under the prefix with its whole content as text (strings, hashes, lists, sets, sorted sets, streams). */
async function redisContents(redis: Redis, prefix: string): Promise<Map<string, string>> {
  const contents = new Map<string, string>();
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500);
    cursor = next;
    for (const key of keys) {
      const type = await redis.type(key);
      let value: unknown;
      if (type === 'string') value = await redis.get(key);
      else if (type === 'hash') value = await redis.hgetall(key);
      else if (type === 'list') value = await redis.lrange(key, 0, -1);
      else if (type === 'set') value = await redis.smembers(key);
      else if (type === 'zset') value = await redis.zrange(key, '0', '-1', 'WITHSCORES');
      else if (type === 'stream') value = await redis.xrange(key, '-', '+');
      else value = `<${type}>`;
      contents.set(key, JSON.stringify(value));
    }
  } while (cursor !== '0');
  return contents;
}

async function deleteKeys(prefix: string): Promise<void> {
  const redis = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1 });
  try {
    await redis.connect();
    const keys = await redis.keys(`${prefix}*`);
    if (keys.length > 0) await redis.del(...keys);
  } finally {
    redis.disconnect();
  }
}

const { defer } = cleanupAfter(afterEach);

/** A sandbox whose sink checks signatures with {@link SECRET}, closed after the test. */
async function sandboxForTest(): Promise<Sandbox> {
  const sandbox = await startWebhookSandbox();
  defer(() => sandbox.close());
  return sandbox;
}

/** The service against the given sandbox, webhooks to its sink unless the env says otherwise; closed after the test. */
async function serviceForTest(sandbox: Sandbox, env: Record<string, string> = {}): Promise<TestService> {
  const target = await startTestService(
    { WEBHOOK_URL: `${sandbox.url}${WEBHOOK_PATH}`, WEBHOOK_SECRET: SECRET, WEBHOOK_RETRY_DELAY_MS: '200', ...env },
    sandbox,
  );
  let closed = false;
  const close = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    await target.close();
  };
  defer(close);
  return { ...target, close };
}

/** A Redis prefix of this test, whose keys are deleted after it (after its services closed). */
function redisPrefixForTest(): string {
  const prefix = uniquePrefix();
  defer(() => deleteKeys(prefix));
  return prefix;
}

const attemptsOf = (sandbox: Sandbox, webhookId: string): WebhookDelivery[] =>
  sandbox.webhooks().filter((delivery) => delivery.webhook_id === webhookId);

/** A verification through the HTTP surface that must answer 201; its webhook id. */
async function verifyAndGetWebhookId(
  target: TestService,
  sub: string,
): Promise<{ verificationId: string; webhookId: string; authorization: string }> {
  const { token, response } = await verifyOnce(target, sub);
  expect(response.status).toBe(201);
  const verificationId = (response.body as { verification_id: string }).verification_id;
  expect(verificationId).toMatch(VERIFICATION_ID);
  return { verificationId, webhookId: webhookIdOf(verificationId), authorization: token.authorization };
}

// ---------------------------------------------------------------------------------------------------------

describe('the independent Standard Webhooks verifier', () => {
  test("when it checks the specification's published example, then it computes exactly the published signature", () => {
    // The example of the Standard Webhooks specification (standard-webhooks/spec, "Signature scheme").
    const secret = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
    const id = 'msg_p5jXN8AQM9LWM0D4loKWxJek';
    const timestamp = '1614265330';
    const payload = '{"test": 2432232314}';
    const published = 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=';

    expect(expectedSignature(secret, id, timestamp, payload)).toBe(published);
    expect(signatureHolds(secret, id, timestamp, payload, `v1,bm9wZQ== ${published}`)).toBe(true);
    // And it can say no: another body, id or timestamp does not match.
    expect(signatureHolds(secret, id, timestamp, '{"test": 2432232315}', published)).toBe(false);
    expect(signatureHolds(secret, 'msg_other', timestamp, payload, published)).toBe(false);
    expect(signatureHolds(secret, id, '1614265331', payload, published)).toBe(false);
  });
});

describe('a delivered webhook (CONTRACT 7.3)', () => {
  test('when a verification passes, then its webhook carries the three headers, a signature the independent verifier accepts, and every listed data field without the image', async () => {
    const receiver = await startRawReceiver();
    defer(receiver.close);
    const sandbox = await sandboxForTest();
    // A false-accept rate makes FaceID send `verification`, so that every listed field is present.
    const target = await serviceForTest(sandbox, { WEBHOOK_URL: receiver.url, POLICY_FALSE_ACCEPT_RATE: '1e-4' });

    const form = validForm();
    form.fields.biz_no = 'order-4711';
    const before = Math.floor(Date.now() / 1000);
    const { token, response } = await verifyOnce(target, 'webhook-user-1', {}, form);
    expect(response.status).toBe(201);
    const verdict = response.body as { verification_id: string; verified_at: string };
    const deliveries = await eventually(
      () => receiver.received,
      (list) => list.length > 0,
    );
    await sleep(300);
    const after = Math.floor(Date.now() / 1000);

    expect(receiver.received).toHaveLength(1);
    const [delivery] = deliveries;
    if (delivery === undefined) throw new Error('no webhook arrived');
    const id = delivery.headers['webhook-id'];
    const timestamp = delivery.headers['webhook-timestamp'];
    const signature = delivery.headers['webhook-signature'];
    expect(id).toBe(webhookIdOf(verdict.verification_id));
    expect(timestamp).toMatch(/^\d+$/);
    expect(Number(timestamp)).toBeGreaterThanOrEqual(before);
    expect(Number(timestamp)).toBeLessThanOrEqual(after);
    expect(signature).toMatch(/^v1,[A-Za-z0-9+/]+={0,2}( |$)/);
    expect(delivery.headers['content-type']).toMatch(/^application\/json/);
    expect(signatureHolds(SECRET, String(id), String(timestamp), delivery.body, String(signature))).toBe(true);
    // Signed with this secret and no other.
    const otherSecret = `whsec_${randomBytes(32).toString('base64')}`;
    expect(signatureHolds(otherSecret, String(id), String(timestamp), delivery.body, String(signature))).toBe(false);

    const event = JSON.parse(delivery.body.toString('utf8')) as {
      type: string;
      timestamp: string;
      data: Record<string, unknown>;
    };
    expect(Object.keys(event).sort()).toEqual(['data', 'timestamp', 'type']);
    expect(event.type).toBe('verification.completed');
    expect(event.timestamp).toMatch(ISO_8601);
    expect(Number.isNaN(Date.parse(event.timestamp))).toBe(false);

    const data = event.data;
    expect(Object.keys(data).sort()).toEqual(DATA_FIELDS);
    expect(data).not.toHaveProperty('image_best');
    expect(data).toMatchObject({
      verification_id: verdict.verification_id,
      user: 'webhook-user-1',
      biz_token: token.bizToken,
      biz_no: 'order-4711',
      liveness_type: 'meglive',
      comparison_type: '0',
      verdict: 'passed',
      reason: 'SUCCESS',
      result_code: 1000,
      result_message: 'SUCCESS',
      verified_at: verdict.verified_at,
    });
    expect(data.verified_at).toMatch(ISO_8601);
    expect(typeof data.faceid_request_id).toBe('string');
    expect(data.verification).toEqual({ ref1: expect.objectContaining({ confidence: expect.any(Number) }) });
    expect(data.attack_result).toEqual(expect.objectContaining({ score: expect.any(Number), result: false }));

    // The backend's pull answers the webhook's data, and never an image.
    const pulled = await getVerification(
      target,
      await bearer('operator-backend', 'verifications:read'),
      verdict.verification_id,
    );
    expect(pulled.status).toBe(200);
    expect(pulled.body).toEqual(data);
  });

  test('when the token was issued for comparison_type 1 (still), then data.comparison_type is the string "1" and attack_result is absent when FaceID sent none', async () => {
    const receiver = await startRawReceiver();
    defer(receiver.close);
    const sandbox = await sandboxForTest();
    const target = await serviceForTest(sandbox, { WEBHOOK_URL: receiver.url });

    // USER_CANCELLATION (4200 series): FaceID sends no attack_result, and no `verification` without verbose.
    const { response } = await verifyOnce(
      target,
      'webhook-user-2',
      { outcome: 'USER_CANCELLATION' },
      validIdcardForm(),
    );
    expect(response.status).toBe(201);
    const deliveries = await eventually(
      () => receiver.received,
      (list) => list.length > 0,
    );
    const [delivery] = deliveries;
    if (delivery === undefined) throw new Error('no webhook arrived');
    const data = (JSON.parse(delivery.body.toString('utf8')) as { data: Record<string, unknown> }).data;
    expect(data).toMatchObject({
      user: 'webhook-user-2',
      comparison_type: '1',
      liveness_type: 'still',
      verdict: 'retry',
      reason: 'USER_CANCELLATION',
      result_message: 'USER_CANCELLATION',
    });
    expect(data).not.toHaveProperty('attack_result');
    expect(data).not.toHaveProperty('verification');
    expect(data).not.toHaveProperty('image_best');
    expect(Object.keys(data).sort()).toEqual(
      DATA_FIELDS.filter((field) => field !== 'attack_result' && field !== 'verification'),
    );
  });

  test("when WEBHOOK_INCLUDE_IMAGE=true, then data.image_best is FaceID's best frame (a base64 JPEG) and the signature still holds", async () => {
    const receiver = await startRawReceiver();
    defer(receiver.close);
    const sandbox = await sandboxForTest();
    const target = await serviceForTest(sandbox, { WEBHOOK_URL: receiver.url, WEBHOOK_INCLUDE_IMAGE: 'true' });

    const { verificationId } = await verifyAndGetWebhookId(target, 'webhook-user-3');
    const deliveries = await eventually(
      () => receiver.received,
      (list) => list.length > 0,
    );
    const [delivery] = deliveries;
    if (delivery === undefined) throw new Error('no webhook arrived');
    const headers = delivery.headers;
    expect(
      signatureHolds(
        SECRET,
        String(headers['webhook-id']),
        String(headers['webhook-timestamp']),
        delivery.body,
        String(headers['webhook-signature']),
      ),
    ).toBe(true);
    const data = (JSON.parse(delivery.body.toString('utf8')) as { data: Record<string, unknown> }).data;
    expect(data.verification_id).toBe(verificationId);
    expect(typeof data.image_best).toBe('string');
    const image = Buffer.from(String(data.image_best), 'base64');
    // JPEG start-of-image marker.
    expect([...image.subarray(0, 3)]).toEqual([0xff, 0xd8, 0xff]);

    // The record the backend pulls never holds it.
    const pulled = await getVerification(
      target,
      await bearer('operator-backend', 'verifications:read'),
      verificationId,
    );
    expect(pulled.status).toBe(200);
    expect(pulled.body).not.toHaveProperty('image_best');
    const { image_best: _image, ...withoutImage } = data;
    expect(pulled.body).toEqual(withoutImage);
  });
});

describe.each([
  ['in the process (no Redis)', false],
  ['in Redis (BullMQ)', true],
])('retries %s', (_label, withRedis) => {
  const redisEnv = (): Record<string, string> =>
    withRedis ? { REDIS_URL, REDIS_KEY_PREFIX: redisPrefixForTest() } : {};

  test('when the receiver is down for two attempts and then up, then the webhook arrives later, accepted exactly once, every attempt with the same webhook-id and its own timestamp, and the metrics count 2 retrying and 1 delivered', async () => {
    const sandbox = await sandboxForTest();
    const env = redisEnv();
    // 500 ms, then 1000 ms: the first and the last attempt are 1.5 s apart, so their timestamps differ.
    const target = await serviceForTest(sandbox, { ...env, WEBHOOK_RETRY_DELAY_MS: '500' });
    if (withRedis) await waitUntilRedisReady(target);
    sandbox.setWebhookStatus(503, 2);

    const { verificationId, webhookId } = await verifyAndGetWebhookId(target, 'retry-user');
    if (withRedis) {
      // The pending delivery is a job in Redis, named by its webhook id (not kept by this process instead).
      const redis = new Redis(REDIS_URL);
      defer(() => redis.disconnect());
      await eventually(
        () => attemptsOf(sandbox, webhookId),
        (attempts) => attempts.length >= 1,
      );
      expect(await redis.exists(`${env.REDIS_KEY_PREFIX}bull:webhooks:${webhookId}`)).toBe(1);
    }
    await eventually(
      () => attemptsOf(sandbox, webhookId),
      (attempts) => attempts.some((attempt) => attempt.accepted),
    );
    // Time for a wrong duplicate attempt to show up.
    await sleep(500);

    const attempts = sandbox.webhooks();
    expect(attempts.map((attempt) => ({ id: attempt.webhook_id, status: attempt.status }))).toEqual([
      { id: webhookId, status: 503 },
      { id: webhookId, status: 503 },
      { id: webhookId, status: 204 },
    ]);
    expect(attempts.filter((attempt) => attempt.accepted)).toHaveLength(1);
    for (const attempt of attempts) {
      expect(attempt.signature_valid).toBe(true);
      expect(attempt.body).toEqual(attempts[0]?.body);
      // Each attempt is stamped when it is made: at most a second before the sink received it.
      const receivedAt = Math.floor(Date.parse(attempt.received_at) / 1000);
      const stamped = Number(attempt.webhook_timestamp);
      expect(receivedAt - stamped).toBeGreaterThanOrEqual(0);
      expect(receivedAt - stamped).toBeLessThanOrEqual(1);
    }
    expect(Number(attempts[2]?.webhook_timestamp)).toBeGreaterThan(Number(attempts[0]?.webhook_timestamp));
    const lastBody = attempts[2]?.body as { data?: { verification_id?: string } } | undefined;
    expect(lastBody?.data?.verification_id).toBe(verificationId);

    const counts = await eventually(
      () => deliveryCounts(target),
      (value) => value.delivered === 1,
    );
    expect(counts).toEqual({ delivered: 1, retrying: 2, gave_up: 0 });
    expect(target.log.text()).not.toContain('Redis did not take the webhook');
  });

  test('when every attempt fails (WEBHOOK_MAX_ATTEMPTS=2, the receiver always 500), then the delivery is given up with a warn line, gave_up counts 1, and the queue depth returns to 0', async () => {
    const sandbox = await sandboxForTest();
    const target = await serviceForTest(sandbox, {
      ...redisEnv(),
      WEBHOOK_MAX_ATTEMPTS: '2',
      WEBHOOK_RETRY_DELAY_MS: '400',
    });
    if (withRedis) await waitUntilRedisReady(target);
    sandbox.setWebhookStatus(500);

    const { webhookId } = await verifyAndGetWebhookId(target, 'give-up-user');
    await eventually(
      () => attemptsOf(sandbox, webhookId),
      (attempts) => attempts.length >= 1,
    );
    // Between the two attempts the delivery is pending.
    expect(await metricValue(target, 'webhook_queue_depth')).toBe(1);

    const counts = await eventually(
      () => deliveryCounts(target),
      (value) => value.gave_up >= 1,
    );
    expect(counts).toEqual({ delivered: 0, retrying: 1, gave_up: 1 });
    const depth = await eventually(
      () => metricValue(target, 'webhook_queue_depth'),
      (value) => value === 0,
    );
    expect(depth).toBe(0);
    // A third attempt would come 800 ms after the second.
    await sleep(1_000);
    expect(attemptsOf(sandbox, webhookId).map((attempt) => attempt.status)).toEqual([500, 500]);
    expect(sandbox.webhooks()).toHaveLength(2);

    const warnings = target.log
      .lines()
      .filter((line) => line.level === 40 && line.webhook_id === webhookId && /given? up/i.test(String(line.msg)));
    expect(warnings).toHaveLength(1);
  });
});

describe('pending deliveries in Redis survive the restart of every instance', () => {
  test.each([
    ['WEBHOOK_INCLUDE_IMAGE=true', true],
    ['WEBHOOK_INCLUDE_IMAGE=false', false],
  ])(
    'when instance A verifies while the receiver answers 503, A is closed, B starts on the same Redis and the receiver recovers (%s), then B delivers the webhook once with the same webhook-id; the pending job holds the image only when asked; afterwards no key holds the image or the JWT, and the record never does',
    async (_label, includeImage) => {
      const sandbox = await sandboxForTest();
      const prefix = redisPrefixForTest();
      const env = {
        REDIS_URL,
        REDIS_KEY_PREFIX: prefix,
        WEBHOOK_RETRY_DELAY_MS: '1000',
        WEBHOOK_INCLUDE_IMAGE: String(includeImage),
      };
      const redis = new Redis(REDIS_URL);
      defer(() => redis.disconnect());
      sandbox.setWebhookStatus(503);

      const a = await serviceForTest(sandbox, env);
      await waitUntilRedisReady(a);
      const { verificationId, webhookId, authorization } = await verifyAndGetWebhookId(a, 'restart-user');
      const firstAttempts = await eventually(
        () => attemptsOf(sandbox, webhookId),
        (attempts) => attempts.length >= 1,
      );
      expect(firstAttempts[0]?.status).toBe(503);
      await a.close();

      // Every instance is gone: the delivery waits in Redis, as a job named by its webhook id.
      const job = await redis.hgetall(`${prefix}bull:webhooks:${webhookId}`);
      expect(typeof job.data).toBe('string');
      const pendingData = JSON.parse(String(job.data)) as { body?: string };
      const pendingEvent = JSON.parse(String(pendingData.body)) as { data: Record<string, unknown> };
      expect(pendingEvent.data.verification_id).toBe(verificationId);
      if (includeImage) expect(typeof pendingEvent.data.image_best).toBe('string');
      else {
        expect(pendingEvent.data).not.toHaveProperty('image_best');
        expect(String(job.data)).not.toContain('/9j/');
      }

      const b = await serviceForTest(sandbox, env);
      await waitUntilRedisReady(b);
      sandbox.setWebhookStatus(204);
      await eventually(
        () => attemptsOf(sandbox, webhookId),
        (attempts) => attempts.some((attempt) => attempt.accepted),
      );
      // Time for a wrong second delivery to show up.
      await sleep(800);

      const attempts = sandbox.webhooks();
      expect(attempts.every((attempt) => attempt.webhook_id === webhookId)).toBe(true);
      expect(attempts.filter((attempt) => attempt.accepted)).toHaveLength(1);
      expect(attempts.every((attempt) => attempt.signature_valid === true)).toBe(true);
      const delivered = attempts.find((attempt) => attempt.accepted)?.body as { data: Record<string, unknown> };
      expect(delivered.data.verification_id).toBe(verificationId);
      expect(delivered.data.user).toBe('restart-user');
      expect(
        await eventually(
          () => metricValue(b, 'webhook_deliveries_total', 'outcome="delivered"'),
          (value) => value === 1,
        ),
      ).toBe(1);
      const image = delivered.data.image_best;
      if (includeImage) expect(typeof image).toBe('string');
      else expect(delivered.data).not.toHaveProperty('image_best');

      // Nothing of the delivery outlives it: no key under the prefix holds the image or the caller's JWT.
      const jwt = authorization.slice('Bearer '.length);
      const jwtSignature = jwt.split('.')[2] ?? jwt;
      const contents = await eventually(
        () => redisContents(redis, prefix),
        (map) => ![...map.values()].some((text) => text.includes('/9j/')),
        3_000,
      );
      expect(contents.size).toBeGreaterThan(0);
      const offending = [...contents]
        .filter(
          ([, text]) =>
            text.includes('/9j/') ||
            (typeof image === 'string' && text.includes(image.slice(0, 64))) ||
            text.includes(jwt) ||
            text.includes(jwtSignature),
        )
        .map(([key]) => key);
      expect(offending).toEqual([]);
      expect(await redis.exists(`${prefix}bull:webhooks:${webhookId}`)).toBe(0);

      // The record, pulled by the backend from the new instance, holds the data and never the image.
      const pulled = await getVerification(b, await bearer('operator-backend', 'verifications:read'), verificationId);
      expect(pulled.status).toBe(200);
      expect(pulled.body).not.toHaveProperty('image_best');
      expect(pulled.body).toMatchObject({ verification_id: verificationId, user: 'restart-user' });
    },
  );
});

describe('the start-up warning of a queue in the process', () => {
  const restartWarnings = (target: TestService): Array<Record<string, unknown>> =>
    target.log
      .lines()
      .filter((line) => line.level === 40 && /restart/i.test(String(line.msg)) && /webhook/i.test(String(line.msg)));

  test('when WEBHOOK_URL is set without REDIS_URL, then the creation log warns that a restart loses pending webhooks', async () => {
    const sandbox = await sandboxForTest();
    const target = await serviceForTest(sandbox);
    expect(restartWarnings(target)).toHaveLength(1);
  });

  test('when WEBHOOK_URL is set with REDIS_URL, then no such warning is logged', async () => {
    const sandbox = await sandboxForTest();
    const target = await serviceForTest(sandbox, { REDIS_URL, REDIS_KEY_PREFIX: redisPrefixForTest() });
    await waitUntilRedisReady(target);
    expect(restartWarnings(target)).toEqual([]);
  });
});

describe('webhook configuration refusals (loadConfig)', () => {
  type Env = Record<string, string | undefined>;
  const PRODUCTION: Env = {
    NODE_ENV: 'production',
    FACEID_API_KEY: 'prod-key',
    FACEID_API_SECRET: 'prod-secret',
    AUTH_JWT_SECRET: 'a-production-jwt-secret-of-32-chars+',
    UUID_SALT: 'a-production-uuid-salt',
  };
  const VALID_SECRET = `whsec_${Buffer.alloc(24, 7).toString('base64')}`;

  function problemsOf(env: Env): string[] {
    let thrown: unknown;
    try {
      loadConfig(env);
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toBeInstanceOf(ConfigError);
    return (thrown as ConfigError).problems;
  }
  const naming = (variable: string): RegExp => new RegExp(`^${variable}(\\.\\d+)?: \\S`);

  test('when production has an http WEBHOOK_URL, then the configuration is refused naming WEBHOOK_URL (https loads)', () => {
    const problems = problemsOf({
      ...PRODUCTION,
      WEBHOOK_URL: 'http://backend.example/hooks',
      WEBHOOK_SECRET: VALID_SECRET,
    });
    expect(problems).toEqual(expect.arrayContaining([expect.stringMatching(naming('WEBHOOK_URL'))]));
    const config = loadConfig({
      ...PRODUCTION,
      WEBHOOK_URL: 'https://backend.example/hooks',
      WEBHOOK_SECRET: VALID_SECRET,
    });
    expect(config.webhook.url).toBe('https://backend.example/hooks');
  });

  test.each([
    ['development', {}],
    ['production', PRODUCTION],
  ])(
    'when WEBHOOK_URL is set without WEBHOOK_SECRET (%s), then the configuration is refused naming WEBHOOK_SECRET',
    (_label, base) => {
      const problems = problemsOf({ ...base, WEBHOOK_URL: 'https://backend.example/hooks' });
      expect(problems).toEqual(expect.arrayContaining([expect.stringMatching(naming('WEBHOOK_SECRET'))]));
    },
  );

  test.each([
    ['no whsec_ prefix', Buffer.alloc(32, 1).toString('base64')],
    ['a wrong prefix', `wh_${Buffer.alloc(32, 1).toString('base64')}`],
    ['only the prefix', 'whsec_'],
    ['fewer than 24 bytes (23)', `whsec_${Buffer.alloc(23, 1).toString('base64')}`],
    ['characters outside base64', `whsec_${'A'.repeat(31)}!`],
    ['base64url characters', `whsec_${'A'.repeat(30)}-_`],
    ['a length no base64 can have (33 characters)', `whsec_${'A'.repeat(33)}`],
    ['padding in the middle', `whsec_${'A'.repeat(16)}==${'A'.repeat(16)}`],
  ])('when WEBHOOK_SECRET has %s, then the configuration is refused naming WEBHOOK_SECRET', (_label, secret) => {
    const problems = problemsOf({ WEBHOOK_URL: 'https://backend.example/hooks', WEBHOOK_SECRET: secret });
    expect(problems).toEqual(expect.arrayContaining([expect.stringMatching(naming('WEBHOOK_SECRET'))]));
  });

  test('when WEBHOOK_SECRET is whsec_ + base64 of exactly 24 bytes, then it loads', () => {
    const config = loadConfig({ WEBHOOK_URL: 'https://backend.example/hooks', WEBHOOK_SECRET: VALID_SECRET });
    expect(config.webhook.secret).toBe(VALID_SECRET);
  });
});
