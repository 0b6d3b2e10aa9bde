import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Redis } from 'ioredis';
import type supertest from 'supertest';
import { jpeg } from './fixtures/images';
import {
  expectProblem,
  expectProblemAnswer,
  type ProblemAnswer,
  postToken,
  signToken,
  startTestService,
  type TestService,
  type TokenForm,
  uniquePrefix,
  validForm,
} from './helpers/test-service';

/**
 * Idempotency-Key (contract section 1): keyed by (user, key), "same body" decided by a
 * fingerprint of fields and file bytes, replays marked `Idempotent-Replayed: true` with no second upstream
 * call, 409 IDEMPOTENCY_KEY_REUSED for another body, 5xx not stored, 4xx stored, concurrent pairs make one
 * upstream call, records live no longer than the token. The same tests run against both stores.
 */

const REDIS_URL = 'redis://127.0.0.1:6379';
const FILE_PREFIX = uniquePrefix();
let namespaces = 0;
const freshPrefix = (): string => `${FILE_PREFIX}${++namespaces}:`;

const redis = new Redis(REDIS_URL, { lazyConnect: true });
beforeAll(() => redis.connect());
afterAll(async () => {
  try {
    const keys = await redis.keys(`${FILE_PREFIX}*`);
    if (keys.length > 0) await redis.del(...keys);
  } finally {
    redis.disconnect();
  }
});

const newUser = (): string => `user-${randomUUID()}`;
const newKey = (): string => `key-${randomUUID()}`;

async function post(
  target: TestService,
  sub: string,
  key: string | undefined,
  form: TokenForm = validForm(),
): Promise<supertest.Response> {
  const headers: Record<string, string> = { Authorization: `Bearer ${await signToken({ sub })}` };
  if (key !== undefined) headers['Idempotency-Key'] = key;
  return postToken(target, form, headers);
}

const withFields = (fields: Record<string, string>, files?: Record<string, Buffer>): TokenForm => {
  const base = validForm();
  return { fields: { ...base.fields, ...fields }, files: files ?? base.files };
};

/** How many requests reached the sandbox so far (it keeps the last 200; these tests stay far below). */
const receivedCount = (target: TestService): number => target.sandbox.received.length;

/**
 * Sends a token request with a header value that supertest (node's client checks) refuses to send as a
 * string: the bytes go out as they are, e.g. UTF-8 `ключ`.
 */
async function rawPost(
  url: string,
  headers: Record<string, string>,
  form: TokenForm,
): Promise<ProblemAnswer & { status: number }> {
  const boundary = `----idem${randomUUID()}`;
  const parts: Buffer[] = [];
  for (const [name, value] of Object.entries(form.fields ?? {})) {
    parts.push(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n${value}\r\n`));
  }
  for (const [name, bytes] of Object.entries(form.files ?? {})) {
    parts.push(
      Buffer.from(
        `--${boundary}\r\nContent-Disposition: form-data; name="${name}"; filename="${name}.jpg"\r\nContent-Type: image/jpeg\r\n\r\n`,
      ),
    );
    parts.push(bytes, Buffer.from('\r\n'));
  }
  parts.push(Buffer.from(`--${boundary}--\r\n`));
  const body = Buffer.concat(parts);
  return new Promise((resolve, reject) => {
    const request = http.request(
      `${url}/v1/biz-tokens`,
      {
        method: 'POST',
        headers: {
          ...headers,
          'Content-Type': `multipart/form-data; boundary=${boundary}`,
          'Content-Length': String(body.length),
        },
      },
      (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () =>
          resolve({
            status: response.statusCode ?? 0,
            headers: response.headers,
            body: JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown,
          }),
        );
      },
    );
    request.on('error', reject);
    request.end(body);
  });
}

const STORES: Array<[string, Record<string, string | undefined>]> = [
  ['memory', { REDIS_URL: undefined }],
  ['redis', { REDIS_URL }],
];

describe.each(STORES)('Idempotency-Key with the %s store', (kind, storeEnv) => {
  let target: TestService;
  let prefix: string;
  let server: http.Server;
  let url: string;
  beforeAll(async () => {
    prefix = freshPrefix();
    target = await startTestService({
      ...storeEnv,
      REDIS_KEY_PREFIX: prefix,
      RATE_LIMIT_MAX: '2',
      RATE_LIMIT_WINDOW_SECONDS: '60',
      FACEID_MAX_RETRIES: '2',
    });
    const deadline = Date.now() + 3_000;
    while (kind === 'redis' && target.service.shared.state() !== 'ready') {
      if (Date.now() > deadline) throw new Error('the service did not reach Redis');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    server = http.createServer(target.service.app);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await target.close();
  });

  it('when the same user repeats a key with the same body, then the replay has the identical body, Idempotent-Replayed: true, one upstream call, and costs no rate limit', async () => {
    const user = newUser();
    const key = newKey();
    const before = receivedCount(target);
    const first = await post(target, user, key);
    expect(first.status).toBe(201);
    expect(first.headers['idempotent-replayed']).toBeUndefined();
    expect(receivedCount(target)).toBe(before + 1);

    // RATE_LIMIT_MAX=2: request, replay, replay, new request all pass only if replays give their request back.
    for (let i = 0; i < 2; i++) {
      const replay = await post(target, user, key);
      expect(replay.status).toBe(201);
      expect(replay.headers['idempotent-replayed']).toBe('true');
      expect(replay.body).toEqual(first.body);
      expect(receivedCount(target)).toBe(before + 1);
    }
    const next = await post(target, user, newKey());
    expect(next.status).toBe(201);
    expect(next.body.biz_token).not.toBe(first.body.biz_token);
    expect(receivedCount(target)).toBe(before + 2);
    // And the limit is real: the third new request of the window is refused.
    expectProblem(await post(target, user, newKey()), 429, 'RATE_LIMITED');
  });

  it('when the same key comes back with another liveness_timeout, then 409 IDEMPOTENCY_KEY_REUSED names Idempotency-Key and nothing goes upstream', async () => {
    const user = newUser();
    const key = newKey();
    expect((await post(target, user, key, withFields({ liveness_timeout: '10' }))).status).toBe(201);
    const before = receivedCount(target);
    const reused = await post(target, user, key, withFields({ liveness_timeout: '11' }));
    expectProblem(reused, 409, 'IDEMPOTENCY_KEY_REUSED', 'Idempotency-Key');
    expect(reused.headers['idempotent-replayed']).toBeUndefined();
    expect(receivedCount(target)).toBe(before);
  });

  it('when the same key comes back with other image bytes under the same field names, then 409 IDEMPOTENCY_KEY_REUSED and nothing goes upstream', async () => {
    const user = newUser();
    const key = newKey();
    expect((await post(target, user, key, withFields({}, { image_ref1: jpeg(64, 64) }))).status).toBe(201);
    const before = receivedCount(target);
    const reused = await post(target, user, key, withFields({}, { image_ref1: jpeg(64, 65) }));
    expectProblem(reused, 409, 'IDEMPOTENCY_KEY_REUSED', 'Idempotency-Key');
    expect(receivedCount(target)).toBe(before);
  });

  it('when another user sends the same key and body, then it is independent: a fresh token and a second upstream call', async () => {
    const key = newKey();
    const before = receivedCount(target);
    const first = await post(target, newUser(), key);
    const second = await post(target, newUser(), key);
    expect(first.status).toBe(201);
    expect(second.status).toBe(201);
    expect(second.headers['idempotent-replayed']).toBeUndefined();
    expect(second.body.biz_token).not.toBe(first.body.biz_token);
    expect(receivedCount(target)).toBe(before + 2);
    // Each user's uuid went upstream once.
    const uuids = target.sandbox.received.slice(-2).map((request) => request.fields.uuid?.[0]);
    expect(new Set(uuids).size).toBe(2);
  });

  it('when the upstream answer is a 5xx, then it is not stored: the same key and body later get 201 from the 4th sandbox call', async () => {
    const user = newUser();
    const key = newKey();
    const form = withFields({ biz_no: 'sandbox:INTERNAL_ERROR*3' });
    const before = receivedCount(target);
    const failed = await post(target, user, key, form);
    expectProblem(failed, 502, 'UPSTREAM_ERROR');
    expect(receivedCount(target)).toBe(before + 3);

    const retried = await post(target, user, key, form);
    expect(retried.status).toBe(201);
    expect(retried.headers['idempotent-replayed']).toBeUndefined();
    expect(typeof retried.body.biz_token).toBe('string');
    expect(receivedCount(target)).toBe(before + 4);
  });

  it('when the upstream answer is a 4xx (NO_FACE_FOUND), then it is stored and replayed with Idempotent-Replayed: true and no second upstream call', async () => {
    const user = newUser();
    const key = newKey();
    const form = withFields({ biz_no: 'sandbox:NO_FACE_FOUND' });
    const before = receivedCount(target);
    const first = await post(target, user, key, form);
    expectProblem(first, 400, 'NO_FACE_FOUND');
    expect(receivedCount(target)).toBe(before + 1);

    const replay = await post(target, user, key, form);
    expectProblem(replay, 400, 'NO_FACE_FOUND');
    expect(replay.headers['idempotent-replayed']).toBe('true');
    const { request_id: _first, ...firstRest } = first.body as Record<string, unknown>;
    const { request_id: _replay, ...replayRest } = replay.body as Record<string, unknown>;
    expect(replayRest).toEqual(firstRest);
    expect(receivedCount(target)).toBe(before + 1);
  });

  it('when two requests with one key arrive together, then both get 201 with the same biz_token from one upstream call', async () => {
    const user = newUser();
    const key = newKey();
    const form = withFields({ biz_no: 'sandbox:latency=400' });
    const before = receivedCount(target);
    const [a, b] = await Promise.all([post(target, user, key, form), post(target, user, key, form)]);
    expect(a.status).toBe(201);
    expect(b.status).toBe(201);
    expect(a.body.biz_token).toBe(b.body.biz_token);
    expect([a.headers['idempotent-replayed'], b.headers['idempotent-replayed']].sort()).toEqual(['true', undefined]);
    expect(receivedCount(target)).toBe(before + 1);
  });

  it('when a user whose window is spent retries a key that already holds a token, then the stored token is replayed, not refused with 429', async () => {
    const user = newUser();
    const key = newKey();
    const first = await post(target, user, newKey());
    const second = await post(target, user, key);
    expect([first.status, second.status]).toEqual([201, 201]);
    expectProblem(await post(target, user, newKey()), 429, 'RATE_LIMITED');
    const before = receivedCount(target);

    // The phone lost the second answer and retries: the token exists and costs nothing to hand out again.
    const replay = await post(target, user, key);
    expect(replay.status).toBe(201);
    expect(replay.headers['idempotent-replayed']).toBe('true');
    expect(replay.body).toEqual(second.body);
    expect(receivedCount(target)).toBe(before);
  });

  it('when the key is the longest allowed (255 printable ASCII characters, spaces and symbols included), then it is accepted and replayed', async () => {
    const user = newUser();
    const key = `a ~!"#$%&'()*+,-./:;<=>?@[\\]^_\`{|}`.padEnd(255, 'z');
    expect(key).toHaveLength(255);
    const first = await post(target, user, key);
    expect(first.status).toBe(201);
    const replay = await post(target, user, key);
    expect(replay.status).toBe(201);
    expect(replay.headers['idempotent-replayed']).toBe('true');
    expect(replay.body).toEqual(first.body);
  });

  it('when the key is empty, 256 characters, non-ASCII or holds a control character, then 400 BAD_ARGUMENTS names Idempotency-Key, with no upstream call, counted like any local 400', async () => {
    const user = newUser();
    const authorization = `Bearer ${await signToken({ sub: user })}`;
    const before = receivedCount(target);

    for (const key of ['', 'k'.repeat(256), 'tab\tinside']) {
      const response = await postToken(target, validForm(), { Authorization: authorization, 'Idempotency-Key': key });
      expectProblem(response, 400, 'BAD_ARGUMENTS', 'Idempotency-Key');
    }
    // Node's client refuses to send 'ключ' as a string; its UTF-8 bytes go out as they are.
    const nonAscii = await rawPost(
      url,
      { Authorization: authorization, 'Idempotency-Key': Buffer.from('ключ', 'utf8').toString('latin1') },
      validForm(),
    );
    expectProblemAnswer(nonAscii, 400, 'BAD_ARGUMENTS', 'Idempotency-Key');
    expect(receivedCount(target)).toBe(before);

    // RATE_LIMIT_MAX=2: the bad requests spent the window like any other authenticated request.
    expectProblem(await post(target, user, undefined), 429, 'RATE_LIMITED');
  });

  if (kind === 'redis') {
    it('when a token is stored under a key, then its Redis record expires no later than the token (TTL <= 3600 s)', async () => {
      const user = newUser();
      const response = await post(target, user, newKey());
      expect(response.status).toBe(201);
      const keys = await redis.keys(`${prefix}idem:*`);
      expect(keys.length).toBeGreaterThan(0);
      const tokenLeftMs = Date.parse(String(response.body.expires_at)) - Date.now();
      for (const key of keys) {
        const ttl = await redis.pttl(key);
        expect(ttl).toBeGreaterThan(0);
        expect(ttl).toBeLessThanOrEqual(3_600_000);
        // A record never outlives the token it holds (a little slack for the two clocks read here).
        expect(ttl).toBeLessThanOrEqual(tokenLeftMs + 1_000);
      }
    });
  }
});
