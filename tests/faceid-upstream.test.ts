import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type supertest from 'supertest';
import { decodeSign } from '../src/faceid/sign';
import { jpeg } from './fixtures/images';
import { freePort } from './helpers/free-port';
import {
  cleanupAfter,
  expectProblem as expectStrictProblem,
  postToken,
  SANDBOX_KEY,
  SANDBOX_SECRET,
  startTestSandbox,
  startTestService,
  type TestService,
  type TokenForm,
  validForm,
  validIdcardForm,
} from './helpers/test-service';

/**
 * Every way FaceID can answer, through the public endpoint: the sandbox is told how to misbehave with a
 * magic biz_no, and each test gets its own service and sandbox so `sandbox.received` counts its attempts.
 * @see ../shared/CONTRACT.md sections 2 and 4
 */

const { start, defer } = cleanupAfter(afterEach);

/** The valid comparison_type 0 / meglive form with a sandbox directive in biz_no. */
function withBizNo(bizNo: string, form: Required<TokenForm> = validForm()): Required<TokenForm> {
  return { fields: { ...form.fields, biz_no: bizNo }, files: form.files };
}

/** A raw_image request: the `image` file is what FaceID looks at for faces and quality. */
function rawImageForm(bizNo: string): Required<TokenForm> {
  return {
    fields: { comparison_type: '0', liveness_type: 'raw_image', biz_no: bizNo },
    files: { image_ref1: jpeg(64, 64), image: jpeg(64, 64) },
  };
}

const PROBLEM_KEYS = ['code', 'detail', 'param', 'request_id', 'status', 'title', 'type'];
/** FaceID's own vocabulary, which must never reach the app on a 5xx. */
const FACEID_INTERNALS = [
  'AUTHORIZATION_ERROR',
  'AUTHENTICATION_ERROR',
  'INTERNAL_ERROR',
  'CONCURRENCY_LIMIT_EXCEEDED',
  'API_KEY_BE_DISCONTINUED',
  'API_NOT_FOUND',
  'INVALID_SIGN',
  'ECONNRESET',
  'socket hang up',
  '<html',
  '/faceid/v3',
];

/**
 * The shared strict problem check (param absent unless given), plus: the body has no key beyond the
 * problem's own, so nothing of FaceID's answer is passed through.
 */
function expectProblem(
  response: supertest.Response,
  status: number,
  code: string,
  param: string | null = null,
): Record<string, unknown> {
  const body = expectStrictProblem(response, status, code, param);
  expect(Object.keys(body).filter((key) => !PROBLEM_KEYS.includes(key))).toEqual([]);
  return body;
}

/** A 5xx body tells the app nothing about FaceID's internals or the service's secrets. */
function expectNoLeak(response: supertest.Response, target: TestService, secrets: string[] = []): void {
  const text = response.text;
  for (const word of [...FACEID_INTERNALS, SANDBOX_KEY, SANDBOX_SECRET, ...secrets]) expect(text).not.toContain(word);
  for (const received of target.sandbox.received)
    for (const sign of received.fields.sign ?? []) expect(text).not.toContain(sign);
  expect(text).not.toMatch(/stack|\n\s+at |\(\/.*:\d+:\d+\)/i);
  // FaceID's request_id format (`<unix seconds>,<uuid>`) is not ours.
  expect(text).not.toMatch(/\d{10},[0-9a-f]{8}-/);
}

/** The request's own log line (written when the answer went out). */
function logLineOf(target: TestService, response: supertest.Response): Record<string, unknown> {
  const requestId = response.headers['x-request-id'];
  const lines = target.log.lines().filter((line) => line.request_id === requestId && 'latency_ms' in line);
  expect(lines).toHaveLength(1);
  return lines[0]!;
}

async function timed<T>(work: () => Promise<T>): Promise<{ result: T; ms: number }> {
  const started = performance.now();
  const result = await work();
  return { result, ms: performance.now() - started };
}

describe('FaceID answers the client caused: mapped to the same code and field, never retried', () => {
  test('when FaceID finds no face in image_ref1, then it answers 400 NO_FACE_FOUND with param image_ref1 after exactly 1 attempt', async () => {
    const target = await start();
    const response = await postToken(target, withBizNo('sandbox:NO_FACE_FOUND'));
    expectProblem(response, 400, 'NO_FACE_FOUND', 'image_ref1');
    expect(target.sandbox.received).toHaveLength(1);
  });

  test('when FaceID finds several faces in the raw_image photo, then it answers 400 MULTIPLE_FACES naming image', async () => {
    const target = await start();
    const response = await postToken(target, rawImageForm('sandbox:MULTIPLE_FACES'));
    expectProblem(response, 400, 'MULTIPLE_FACES', 'image');
    expect(target.sandbox.received).toHaveLength(1);
    expect(target.sandbox.received[0]?.files.image).toEqual([jpeg(64, 64).length]);
  });

  test('when FaceID finds the raw_image photo of low quality, then it answers 400 LOW_QUALITY naming image', async () => {
    const target = await start();
    const response = await postToken(target, rawImageForm('sandbox:LOW_QUALITY'));
    expectProblem(response, 400, 'LOW_QUALITY', 'image');
    expect(target.sandbox.received).toHaveLength(1);
  });

  test('when FaceID says the account may not use the data source, then it answers 403 COMPARISON_TYPE_NOT_PERMITTED', async () => {
    const target = await start();
    const response = await postToken(target, withBizNo('sandbox:NO_DATA_SOURCE_PERMISSION', validIdcardForm()));
    const body = expectProblem(response, 403, 'COMPARISON_TYPE_NOT_PERMITTED', 'comparison_type');
    expect(JSON.stringify(body)).not.toContain('AUTHORIZATION_ERROR');
    expect(JSON.stringify(body)).not.toContain('11010519491231002X');
    expect(target.sandbox.received).toHaveLength(1);
  });

  test('when FaceID says the account may not compare with a reference photo (NO_VERIFY_PERMISSION), then comparison_type 0 gets 403 COMPARISON_TYPE_NOT_PERMITTED once', async () => {
    const target = await start();
    const response = await postToken(target, withBizNo('sandbox:NO_VERIFY_PERMISSION'));
    const body = expectProblem(response, 403, 'COMPARISON_TYPE_NOT_PERMITTED', 'comparison_type');
    expect(JSON.stringify(body)).not.toContain('AUTHORIZATION_ERROR');
    expect(JSON.stringify(body)).not.toContain('NO_VERIFY_PERMISSION');
    expect(target.sandbox.received).toHaveLength(1);
    expect(target.sandbox.received[0]?.fields.comparison_type).toEqual(['0']);
  });

  test('when FaceID says MORE_RETRY_TIMES, then it answers 429 RETRY_LIMIT_REACHED without retrying', async () => {
    const target = await start();
    const response = await postToken(target, withBizNo('sandbox:MORE_RETRY_TIMES'));
    const body = expectProblem(response, 429, 'RETRY_LIMIT_REACHED');
    expect(JSON.stringify(body)).not.toContain('AUTHORIZATION_ERROR');
    expect(target.sandbox.received).toHaveLength(1);
  });
});

describe('FaceID busy: retried, then 503 UPSTREAM_BUSY with Retry-After', () => {
  test.each([
    ['403 CONCURRENCY_LIMIT_EXCEEDED', 'sandbox:CONCURRENCY_LIMIT_EXCEEDED'],
    ['429 CONCURRENCY_LIMIT_EXCEEDED', 'sandbox:CONCURRENCY_LIMIT_EXCEEDED_429'],
  ])(
    'when FaceID keeps answering %s, then after 1 + FACEID_MAX_RETRIES attempts it answers 503 UPSTREAM_BUSY with Retry-After',
    async (_what, bizNo) => {
      const target = await start({ FACEID_MAX_RETRIES: '2' });
      const response = await postToken(target, withBizNo(bizNo));
      expectProblem(response, 503, 'UPSTREAM_BUSY');
      expect(response.headers['retry-after']).toMatch(/^[1-9]\d*$/);
      expectNoLeak(response, target);
      expect(target.sandbox.received).toHaveLength(3);
    },
  );
});

describe('FaceID rejects the service itself: 502 UPSTREAM_REJECTED, details only in the log', () => {
  test("when FaceID says the api key is discontinued, then it answers 502 UPSTREAM_REJECTED once, and the log keeps FaceID's reason", async () => {
    const target = await start();
    const response = await postToken(target, withBizNo('sandbox:API_KEY_BE_DISCONTINUED'));
    expectProblem(response, 502, 'UPSTREAM_REJECTED');
    expectNoLeak(response, target);
    expect(target.sandbox.received).toHaveLength(1);
    expect(JSON.stringify(logLineOf(target, response))).toContain('API_KEY_BE_DISCONTINUED');
  });

  test('when FaceID answers 404 API_NOT_FOUND, then it answers 502 UPSTREAM_REJECTED without retrying', async () => {
    const target = await start();
    const response = await postToken(target, withBizNo('sandbox:API_NOT_FOUND'));
    expectProblem(response, 502, 'UPSTREAM_REJECTED');
    expectNoLeak(response, target);
    expect(target.sandbox.received).toHaveLength(1);
  });

  test('when FACEID_BASE_URL has a wrong path, then the real 404 API_NOT_FOUND becomes 502 UPSTREAM_REJECTED', async () => {
    const sandbox = await startTestSandbox();
    defer(() => sandbox.close());
    const target = await startTestService({ FACEID_BASE_URL: `${sandbox.url}/nope` }, sandbox);
    defer(target.close);
    const response = await postToken(target, validForm());
    expectProblem(response, 502, 'UPSTREAM_REJECTED');
    expectNoLeak(response, target);
    expect(response.text).not.toContain('/nope');
    // The sandbox never reached get_biz_token: the path was wrong.
    expect(sandbox.received).toHaveLength(0);
  });

  test("when the service signs with a wrong api secret, then FaceID's AUTHENTICATION_ERROR becomes 502 UPSTREAM_REJECTED", async () => {
    const wrongSecret = 'wrong-secret-never-to-be-shown';
    const target = await start({ FACEID_API_SECRET: wrongSecret });
    const response = await postToken(target, validForm());
    expectProblem(response, 502, 'UPSTREAM_REJECTED');
    expectNoLeak(response, target, [wrongSecret]);
    expect(target.sandbox.received).toHaveLength(1);
    expect(target.log.text()).not.toContain(wrongSecret);
  });
});

describe('FaceID broken or unreachable: 502 UPSTREAM_ERROR / 504 UPSTREAM_TIMEOUT', () => {
  test('when FaceID keeps answering INTERNAL_ERROR, then after 1 + FACEID_MAX_RETRIES attempts it answers 502 UPSTREAM_ERROR', async () => {
    const target = await start({ FACEID_MAX_RETRIES: '2' });
    const response = await postToken(target, withBizNo('sandbox:INTERNAL_ERROR'));
    expectProblem(response, 502, 'UPSTREAM_ERROR');
    expectNoLeak(response, target);
    expect(target.sandbox.received).toHaveLength(3);
  });

  test('when FaceID answers an HTML page instead of JSON, then it answers 502 UPSTREAM_ERROR', async () => {
    const target = await start();
    const response = await postToken(target, withBizNo('sandbox:NOT_JSON'));
    expectProblem(response, 502, 'UPSTREAM_ERROR');
    expectNoLeak(response, target);
    // An unreadable answer is not one the contract retries.
    expect(target.sandbox.received).toHaveLength(1);
  });

  // The seed's other AUTHORIZATION_ERROR reasons: each is the operator's problem, never the caller's.
  test.each(['EXPIRED_SIGN', 'INVALID_SIGN', 'IP_NOT_ALLOWED', 'LIMIT_REACHED', 'DENIED'])(
    'when FaceID refuses the service with AUTHORIZATION_ERROR: %s, then it answers 502 UPSTREAM_REJECTED without retrying or showing why',
    async (reason) => {
      const target = await start({ FACEID_MAX_RETRIES: '2' });
      const response = await postToken(target, withBizNo(`sandbox:error=AUTHORIZATION_ERROR: ${reason}`));
      expectProblem(response, 502, 'UPSTREAM_REJECTED');
      expectNoLeak(response, target, [reason]);
      expect(target.sandbox.received).toHaveLength(1);
    },
  );

  test('when FaceID answers an error string the service does not know, then it answers 502 UPSTREAM_ERROR without retrying, and the log keeps the string', async () => {
    const unknown = 'SOMETHING_UNDOCUMENTED: new reason';
    const target = await start({ FACEID_MAX_RETRIES: '2' });
    const response = await postToken(target, withBizNo(`sandbox:error=${unknown}`));
    expectProblem(response, 502, 'UPSTREAM_ERROR');
    expectNoLeak(response, target, ['SOMETHING_UNDOCUMENTED', 'new reason']);
    expect(target.sandbox.received).toHaveLength(1);
    expect(logLineOf(target, response).upstream).toMatchObject({ attempts: 1, faceidError: unknown });
  });

  test("when nothing listens on FACEID_BASE_URL's port, then the refused connections are retried and it answers 502 UPSTREAM_ERROR quickly", async () => {
    const port = await freePort();
    const target = await start({
      FACEID_BASE_URL: `http://127.0.0.1:${port}`,
      FACEID_MAX_RETRIES: '2',
      FACEID_TIMEOUT_MS: '3000',
    });
    const { result: response, ms } = await timed(() => postToken(target, validForm()));
    expectProblem(response, 502, 'UPSTREAM_ERROR');
    expectNoLeak(response, target, ['ECONNREFUSED', `127.0.0.1:${port}`]);
    // A refusal is not a timeout: the answer comes long before FACEID_TIMEOUT_MS.
    expect(ms).toBeLessThan(2_000);
    expect(logLineOf(target, response).upstream).toMatchObject({ attempts: 3, networkError: 'ECONNREFUSED' });
    expect(target.sandbox.received).toHaveLength(0);
  });

  test('when FaceID keeps dropping the connection, then after 1 + FACEID_MAX_RETRIES attempts it answers 502 UPSTREAM_ERROR', async () => {
    const target = await start({ FACEID_MAX_RETRIES: '2' });
    const response = await postToken(target, withBizNo('sandbox:DROP'));
    expectProblem(response, 502, 'UPSTREAM_ERROR');
    expectNoLeak(response, target);
    expect(target.sandbox.received).toHaveLength(3);
  });

  test('when FaceID never answers, then it answers 504 UPSTREAM_TIMEOUT after about FACEID_TIMEOUT_MS', async () => {
    const target = await start({ FACEID_TIMEOUT_MS: '800' });
    const { result: response, ms } = await timed(() => postToken(target, withBizNo('sandbox:HANG')));
    expectProblem(response, 504, 'UPSTREAM_TIMEOUT');
    expectNoLeak(response, target);
    expect(ms).toBeGreaterThanOrEqual(700);
    expect(ms).toBeLessThan(1500);
    expect(target.sandbox.received).toHaveLength(1);
  });

  test('when FaceID answers its own plain-text 413, then it answers 413 PAYLOAD_TOO_LARGE as problem+json', async () => {
    let posts = 0;
    const tooLarge = http.createServer((req, res) => {
      posts += req.method === 'POST' ? 1 : 0;
      req.resume();
      req.on('end', () => {
        res.writeHead(413, { 'Content-Type': 'text/plain' });
        res.end('Request Entity Too Large');
      });
    });
    await new Promise<void>((resolve) => tooLarge.listen(0, '127.0.0.1', resolve));
    defer(
      () =>
        new Promise<void>((resolve) => {
          tooLarge.closeAllConnections();
          tooLarge.close(() => resolve());
        }),
    );
    const { port } = tooLarge.address() as AddressInfo;
    const target = await start({ FACEID_BASE_URL: `http://127.0.0.1:${port}` });
    const response = await postToken(target, validForm());
    expectProblem(response, 413, 'PAYLOAD_TOO_LARGE');
    expect(posts).toBe(1);
  });
});

describe('retries', () => {
  test('when FaceID fails once with INTERNAL_ERROR, then the retry succeeds with a new, valid sign', async () => {
    const target = await start();
    const response = await postToken(target, withBizNo('sandbox:INTERNAL_ERROR*1'));
    expect(response.status).toBe(201);
    expect(response.body.biz_token).toMatch(/^\d{10},[0-9a-f-]{36}$/);
    const signs = target.sandbox.received.map((received) => received.fields.sign?.[0]);
    expect(signs).toHaveLength(2);
    expect(signs[0]).not.toBe(signs[1]);
    const now = Date.now() / 1000;
    for (const sign of signs) {
      const decoded = decodeSign(sign ?? '');
      expect(decoded).toBeDefined();
      expect(decoded!.apiKey).toBe(SANDBOX_KEY);
      expect(decoded!.digestMatches(SANDBOX_SECRET)).toBe(true);
      expect(Math.abs(decoded!.currentTime - now)).toBeLessThan(5);
      expect(decoded!.expireTime).toBeGreaterThan(decoded!.currentTime);
    }
    expect(target.sandbox.received.map((received) => received.fields.sign_version)).toEqual([
      ['hmac_sha1'],
      ['hmac_sha1'],
    ]);
  });

  test('when FaceID fails twice and FACEID_MAX_RETRIES is 2, then the third attempt succeeds', async () => {
    const target = await start({ FACEID_MAX_RETRIES: '2' });
    const response = await postToken(target, withBizNo('sandbox:INTERNAL_ERROR*2'));
    expect(response.status).toBe(201);
    expect(target.sandbox.received).toHaveLength(3);
  });

  test('when FaceID fails twice and FACEID_MAX_RETRIES is 1, then it answers 502 UPSTREAM_ERROR after exactly 2 attempts', async () => {
    const target = await start({ FACEID_MAX_RETRIES: '1' });
    const response = await postToken(target, withBizNo('sandbox:INTERNAL_ERROR*2'));
    expectProblem(response, 502, 'UPSTREAM_ERROR');
    expect(target.sandbox.received).toHaveLength(2);
  });

  test('when FACEID_MAX_RETRIES is 0, then a single INTERNAL_ERROR is final after 1 attempt', async () => {
    const target = await start({ FACEID_MAX_RETRIES: '0' });
    const response = await postToken(target, withBizNo('sandbox:INTERNAL_ERROR*1'));
    expectProblem(response, 502, 'UPSTREAM_ERROR');
    expect(target.sandbox.received).toHaveLength(1);
  });

  test('when FaceID drops the connection once, then the retry succeeds', async () => {
    const target = await start();
    const response = await postToken(target, withBizNo('sandbox:DROP*1'));
    expect(response.status).toBe(201);
    expect(response.body.biz_token).toMatch(/^\d{10},[0-9a-f-]{36}$/);
    expect(target.sandbox.received).toHaveLength(2);
  });

  test('when FaceID answers slower than FACEID_TIMEOUT_MS, then it answers 504 UPSTREAM_TIMEOUT well before FaceID would have', async () => {
    const target = await start({ FACEID_TIMEOUT_MS: '800' });
    const { result: response, ms } = await timed(() => postToken(target, withBizNo('sandbox:latency=1500')));
    expectProblem(response, 504, 'UPSTREAM_TIMEOUT');
    expect(ms).toBeLessThan(1500);
    expect(target.sandbox.received).toHaveLength(1);
  });

  test('when slow failures would be retried past the deadline, then the retry in flight is cut off at FACEID_TIMEOUT_MS with 504 UPSTREAM_TIMEOUT', async () => {
    // Each attempt fails after 700 ms. The first ends at ~700 ms with ~300 ms left, more than the first
    // backoff (under 100 ms), so the second attempt always starts, and it could only end after 1400 ms:
    // the 1000 ms deadline always falls inside it, whatever the jitter.
    const target = await start({ FACEID_TIMEOUT_MS: '1000', FACEID_MAX_RETRIES: '10' });
    const { result: response, ms } = await timed(() =>
      postToken(target, withBizNo('sandbox:latency=700,INTERNAL_ERROR')),
    );
    expectProblem(response, 504, 'UPSTREAM_TIMEOUT');
    expect(ms).toBeGreaterThanOrEqual(950);
    // Waiting for the second attempt's own answer would take at least 1400 ms.
    expect(ms).toBeLessThan(1300);
    expect(target.sandbox.received).toHaveLength(2);
  });
});

describe('connections', () => {
  test('when 5 requests succeed one after another, then they share one kept-alive connection to FaceID', async () => {
    const target = await start();
    const before = target.sandbox.connectionCount();
    for (let i = 0; i < 5; i++) expect((await postToken(target, validForm())).status).toBe(201);
    expect(target.sandbox.received).toHaveLength(5);
    expect(target.sandbox.connectionCount() - before).toBe(1);
  });
});

describe('the request log line', () => {
  test('when a token is issued, then its log line has request id, pseudonymous user, code OK and the upstream facts', async () => {
    const target = await start();
    const response = await postToken(target, validForm());
    expect(response.status).toBe(201);
    const line = logLineOf(target, response);
    expect(line.request_id).toBe(response.headers['x-request-id']);
    // The user is the pseudonym also sent upstream as uuid, never the raw `sub`.
    expect(typeof line.user).toBe('string');
    expect(line.user).toBe(target.sandbox.received[0]?.fields.uuid?.[0]);
    expect(line.user).not.toBe('user-1');
    expect(line.code).toBe('OK');
    const upstream = line.upstream as Record<string, unknown> | undefined;
    expect(upstream?.attempts).toBe(1);
    expect(upstream?.faceidRequestId).toMatch(/^\d{10},[0-9a-f-]{36}$/);
  });

  test('when a token is issued after a retry, then its log line shows 2 attempts and no sign or secret', async () => {
    const target = await start();
    const response = await postToken(target, withBizNo('sandbox:INTERNAL_ERROR*1'));
    expect(response.status).toBe(201);
    const line = logLineOf(target, response);
    expect(line.code).toBe('OK');
    expect((line.upstream as Record<string, unknown> | undefined)?.attempts).toBe(2);
    const text = target.log.text();
    expect(text).not.toContain(SANDBOX_SECRET);
    for (const received of target.sandbox.received)
      expect(text).not.toContain(received.fields.sign?.[0] ?? '<no sign>');
  });
});
