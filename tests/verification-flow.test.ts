import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Redis } from 'ioredis';
import type supertest from 'supertest';
import { freshSign, SIGN_VERSION } from '../src/faceid/sign';
import type { VerifyOutcome } from '../src/sandbox/sandbox-server';
import { VERDICT_TABLE } from '../src/verification/verdict';
import { jpeg } from './fixtures/images';
import { freePort } from './helpers/free-port';
import { announceUpload } from './helpers/raw-request';
import {
  cleanupAfter,
  expectProblem,
  expectProblemAnswer,
  postToken,
  SANDBOX_KEY,
  SANDBOX_SECRET,
  signToken,
  startTestService,
  type TestService,
  type TokenForm,
  uniquePrefix,
  validForm,
  validIdcardForm,
} from './helpers/test-service';
import {
  APP_VIEW_KEYS,
  bearer,
  DATA_FIELDS,
  getVerification,
  issueToken,
  makePackage,
  postVerification,
  VERIFICATION_ID,
  VERIFICATIONS_PATH,
  verifyOnce,
} from './helpers/verification';

/**
 * The verification feature (CONTRACT section 7) through the HTTP surface: a token, the sandbox's package,
 * `POST /v1/verifications`, the verdict table and the policy, ownership, once per token, input errors, the
 * upstream's failures, what logs and Redis hold, metrics and the OpenAPI document.
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

/** A service (and its own sandbox) per test that needs its own configuration or sandbox scenario. */
const { start, defer } = cleanupAfter(afterEach);

/** The shared service for the tests that need no configuration of their own. */
let shared: TestService;
beforeAll(async () => {
  shared = await startTestService();
});
afterAll(() => shared.close());

const newUser = (): string => `user-${randomUUID()}`;
const BACKEND_SCOPE = 'openid verifications:read';

/** The request's own log line (written when the answer went out). */
function logLineOf(target: TestService, response: supertest.Response): Record<string, unknown> {
  const requestId = response.headers['x-request-id'];
  const lines = target.log.lines().filter((line) => line.request_id === requestId && 'latency_ms' in line);
  expect(lines).toHaveLength(1);
  return lines[0] as Record<string, unknown>;
}

/** Lines at warn (40) written while the request was handled. */
const warnLinesOf = (target: TestService, response: supertest.Response): Array<Record<string, unknown>> =>
  target.log.lines().filter((line) => line.request_id === response.headers['x-request-id'] && line.level === 40);

/** A 201 verdict as the app sees it: exactly the five fields, a vf_ ULID id, a Location, nothing else. */
function expectVerdict(
  response: supertest.Response,
  bizToken: string,
  verdict: string,
  reason: string,
): Record<string, unknown> {
  expect({ status: response.status, body: response.body }).toMatchObject({
    status: 201,
    body: { biz_token: bizToken, verdict, reason },
  });
  expect(response.headers['content-type']).toMatch(/^application\/json(;|$)/);
  const body = response.body as Record<string, unknown>;
  expect(Object.keys(body).sort()).toEqual(APP_VIEW_KEYS);
  expect(body.verification_id).toMatch(VERIFICATION_ID);
  expect(response.headers.location).toBe(`${VERIFICATIONS_PATH}/${body.verification_id as string}`);
  expect(new Date(body.verified_at as string).toISOString()).toBe(body.verified_at);
  return body;
}

/**
 * A request made after an error: errors are not stored, so it must not wait on anything the failed request
 * left behind (such as a pending record that only expires after the upstream deadline).
 */
async function promptly(request: Promise<supertest.Response>): Promise<supertest.Response> {
  const started = performance.now();
  const response = await request;
  expect(performance.now() - started).toBeLessThan(1_000);
  return response;
}

/** Waits (briefly) until the service's /readyz says Redis is ok. */
async function untilRedisReady(target: TestService): Promise<void> {
  const deadline = Date.now() + 3_000;
  for (;;) {
    const response = await target.http().get('/readyz');
    if ((response.body as { checks?: { redis?: string } }).checks?.redis === 'ok') return;
    if (Date.now() > deadline) throw new Error(`the service did not reach Redis: ${response.text}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

async function startWithRedis(env: Record<string, string> = {}, prefix = freshPrefix()): Promise<TestService> {
  const target = await start({ REDIS_URL, REDIS_KEY_PREFIX: prefix, ...env });
  await untilRedisReady(target);
  return target;
}

/** A package with one byte of its content changed: FaceID cannot parse it (MEGLIVE_DATA_ERROR). */
function altered(bytes: Buffer): Buffer {
  const copy = Buffer.from(bytes);
  const index = 20;
  copy[index] = (copy[index] ?? 0) ^ 0x01;
  return copy;
}

/**
 * A FaceID stand-in for answers the sandbox cannot give (a passing result without attack_result or without
 * verification): get_biz_token issues a fresh token, verify answers `verifyBody` with 200.
 */
async function startStubFaceId(
  verifyBody: Record<string, unknown>,
  /** Instead of the 200 JSON answer: this status and plain text (FaceID's 413 is plain text). */
  rawVerify?: { status: number; text: string },
): Promise<{ url: string; verifyCalls: () => number; close: () => Promise<void> }> {
  let verifyCalls = 0;
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const path = (req.url ?? '').split('?')[0];
      const requestId = `${Math.floor(Date.now() / 1000)},${randomUUID()}`;
      let body: Record<string, unknown>;
      if (path === '/faceid/v3/sdk/get_biz_token') {
        body = { biz_token: `${Math.floor(Date.now() / 1000)},${randomUUID()}`, time_used: 3, request_id: requestId };
      } else if (path === '/faceid/v3/sdk/verify') {
        verifyCalls += 1;
        if (rawVerify !== undefined) {
          res.writeHead(rawVerify.status, { 'Content-Type': 'text/plain' }).end(rawVerify.text);
          return;
        }
        body = { request_id: requestId, biz_no: '', time_used: 5, ...verifyBody };
      } else {
        res.writeHead(404, { 'Content-Type': 'application/json' }).end('{"error":"API_NOT_FOUND"}');
        return;
      }
      res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify(body));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    verifyCalls: () => verifyCalls,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** `images.image_best` as the sandbox's verify answers it, asked directly (a token of its own is spent). */
async function sandboxImageBest(target: TestService): Promise<string> {
  const token = await issueToken(target, newUser());
  const form = new FormData();
  form.append('sign', freshSign(SANDBOX_KEY, SANDBOX_SECRET));
  form.append('sign_version', SIGN_VERSION);
  form.append('biz_token', token.bizToken);
  form.append('meglive_data', new Blob([makePackage(target, token.bizToken)]), 'meglive_data');
  const answer = await fetch(`${target.sandbox.url}/faceid/v3/sdk/verify`, { method: 'POST', body: form });
  const body = (await answer.json()) as { images?: { image_best?: string } };
  const image = body.images?.image_best;
  if (typeof image !== 'string' || image.length < 100) throw new Error(`no image_best: ${JSON.stringify(body)}`);
  return image;
}

const rawImageForm = (): Required<TokenForm> => ({
  fields: { comparison_type: '0', liveness_type: 'raw_image' },
  files: { image_ref1: jpeg(64, 64), image: jpeg(64, 64) },
});

// ---------------------------------------------------------------------------------------------------------
describe('the whole flow against the sandbox', () => {
  test('when a user verifies their own token with a SUCCESS package, then it answers 201 with exactly the five fields, a vf_ ULID id and a Location', async () => {
    const user = newUser();
    const before = shared.sandbox.verifyCount();
    const { token, response } = await verifyOnce(shared, user);
    const body = expectVerdict(response, token.bizToken, 'passed', 'SUCCESS');
    expect(Date.now() - Date.parse(body.verified_at as string)).toBeLessThan(10_000);
    expect(shared.sandbox.verifyCount()).toBe(before + 1);

    // What went upstream: the token, the package byte for byte (by size), a sign.
    const sent = shared.sandbox.receivedVerifications.at(-1);
    expect(sent?.fields.biz_token).toEqual([token.bizToken]);
    expect(sent?.fields.sign_version).toEqual([SIGN_VERSION]);
    expect(sent?.fields.sign?.length).toBe(1);
    expect(sent?.files.meglive_data).toEqual([makePackage(shared, token.bizToken).length]);

    // Nothing of FaceID's answer: scores, thresholds, attack result, images, FaceID's request_id.
    for (const word of ['confidence', 'threshold', 'attack', 'score', 'image', 'request_id', '0.26', '0.5,', '/9j/']) {
      expect(response.text).not.toContain(word);
    }
    const record = await getVerification(
      shared,
      await bearer('backend', BACKEND_SCOPE),
      body.verification_id as string,
    );
    expect(record.body.faceid_request_id).toMatch(/^\d{10},[0-9a-f-]{36}$/);
    expect(response.text).not.toContain(record.body.faceid_request_id);
  });

  test('when the owner reads the Location back, then it gets the same app view; the backend scope gets the whole record without the image; another user gets 404', async () => {
    const user = newUser();
    const { token, response } = await verifyOnce(shared, user);
    const body = expectVerdict(response, token.bizToken, 'passed', 'SUCCESS');
    const location = response.headers.location as string;

    const asOwner = await getVerification(shared, user, location);
    expect(asOwner.status).toBe(200);
    expect(asOwner.body).toEqual(body);

    const asBackend = await getVerification(shared, await bearer('backend-service', BACKEND_SCOPE), location);
    expect(asBackend.status).toBe(200);
    const record = asBackend.body as Record<string, unknown>;
    expect(Object.keys(record).sort()).toEqual(DATA_FIELDS.filter((field) => field !== 'verification'));
    expect(record).toMatchObject({
      verification_id: body.verification_id,
      user,
      biz_token: token.bizToken,
      biz_no: '',
      liveness_type: 'meglive',
      comparison_type: '0',
      verdict: 'passed',
      reason: 'SUCCESS',
      result_code: 1000,
      result_message: 'SUCCESS',
      attack_result: { score: 0.26, threshold: 0.5, result: false },
      verified_at: body.verified_at,
    });
    expect(record.faceid_request_id).toMatch(/^\d{10},[0-9a-f-]{36}$/);
    expect(asBackend.text).not.toContain('image_best');
    expect(asBackend.text).not.toContain('/9j/');
    // FaceID's request_id is the one the log line names.
    expect((logLineOf(shared, response).upstream as Record<string, unknown>).faceidRequestId).toBe(
      record.faceid_request_id,
    );

    const asOther = await getVerification(shared, newUser(), location);
    expect(asOther.status).toBe(404);
    expect(asOther.text).not.toContain(token.bizToken);
  });

  test('when a caller has a scope that only looks like verifications:read, or no scope, then reading another user’s verification is 404', async () => {
    const { response } = await verifyOnce(shared, newUser());
    const location = response.headers.location as string;
    for (const scope of ['openid', 'verifications:readx', 'verifications:write', 'openid,verifications:read']) {
      const read = await getVerification(shared, await bearer('backend-service', scope), location);
      expect({ scope, status: read.status }).toEqual({ scope, status: 404 });
    }
  });

  test('when a verification id is unknown or malformed, then GET answers 404 even for the backend; without a JWT, 401', async () => {
    const backend = await bearer('backend-service', BACKEND_SCOPE);
    for (const id of ['vf_01JDQ6Z8V4W3M5N7P9R2T4X6Y8', 'vf_nope', 'anything']) {
      expect((await getVerification(shared, backend, id)).status).toBe(404);
    }
    const { response } = await verifyOnce(shared, newUser());
    expectProblem(await getVerification(shared, '', response.headers.location as string), 401, 'UNAUTHENTICATED');
  });

  test('when a raw_image token is verified without meglive_data, then it answers 201 passed and FaceID got no meglive_data', async () => {
    const user = newUser();
    const token = await issueToken(shared, user, rawImageForm());
    const response = await postVerification(shared, token.authorization, { bizToken: token.bizToken });
    expectVerdict(response, token.bizToken, 'passed', 'SUCCESS');
    const sent = shared.sandbox.receivedVerifications.at(-1);
    expect(sent?.fields.biz_token).toEqual([token.bizToken]);
    expect(sent?.files.meglive_data).toBeUndefined();
    const record = await getVerification(shared, await bearer('backend', BACKEND_SCOPE), response.body.verification_id);
    expect(record.body).toMatchObject({ liveness_type: 'raw_image', comparison_type: '0' });
  });

  test('when a raw_image token is verified with a package, then the package is sent and its outcome decides', async () => {
    const user = newUser();
    const token = await issueToken(shared, user, rawImageForm());
    const response = await postVerification(shared, token.authorization, {
      bizToken: token.bizToken,
      megliveData: makePackage(shared, token.bizToken, { outcome: 'PASS_LIVING_NOT_THE_SAME' }),
    });
    expectVerdict(response, token.bizToken, 'failed', 'PASS_LIVING_NOT_THE_SAME');
    expect(shared.sandbox.receivedVerifications.at(-1)?.files.meglive_data?.length).toBe(1);
  });
});

// ---------------------------------------------------------------------------------------------------------
describe('the verdict table (CONTRACT 7.2)', () => {
  /** Every documented outcome, with the verdict the contract's table gives it. */
  const ROWS: Array<[VerifyOutcome, string]> = [
    ['SUCCESS', 'passed'],
    ['PASS_LIVING_NOT_THE_SAME', 'failed'],
    ['DATA_SOURCE_ERROR', 'retry'],
    ['NO_ID_CARD_NUMBER', 'failed'],
    ['ID_NUMBER_NAME_NOT_MATCH', 'failed'],
    ['NO_FACE_FOUND', 'failed'],
    ['NO_ID_PHOTO', 'failed'],
    ['PHOTO_FORMAT_ERROR', 'failed'],
    ['FAIL_LIVING_FACE_ATTACK', 'failed'],
    ['VIDEO_LACK_FRAMES', 'retry'],
    ['FAIL_EYES_CLOSE_DETECTION', 'retry'],
    ['BIZ_TOKEN_DENIED', 'retry'],
    ['AUTHENTICATION_FAIL', 'retry'],
    ['MOBILE_PHONE_NOT_SUPPORT', 'retry'],
    ['SDK_TOO_OLD', 'retry'],
    ['MOBILE_PHONE_NO_AUTHORITY', 'retry'],
    ['USER_CANCELLATION', 'retry'],
    ['USER_TIMEOUT', 'retry'],
    ['VERIFICATION_FAILURE', 'retry'],
    ['UNDETECTED_FACE', 'retry'],
    ['ACTION_ERROR', 'retry'],
    ['LIVING_NOT_START', 'retry'],
    ['LIVING_IN_PROGRESS', 'retry'],
    ['LIVING_OVERTIME', 'retry'],
  ];

  test.each(ROWS)(
    'when FaceID answers %s, then the verdict is %s with that reason and no warn line',
    async (outcome, verdict) => {
      const { token, response } = await verifyOnce(shared, newUser(), { outcome });
      expectVerdict(response, token.bizToken, verdict, outcome);
      expect(warnLinesOf(shared, response)).toEqual([]);
    },
  );

  /** Codes the package forces (with a result_message), and the verdict the contract gives them. */
  const CODES: Array<[number, VerifyOutcome, string]> = [
    [3100, 'DATA_SOURCE_ERROR', 'retry'],
    [3101, 'NO_ID_PHOTO', 'retry'],
    [3150, 'NO_ID_CARD_NUMBER', 'retry'],
    [3199, 'PHOTO_FORMAT_ERROR', 'retry'],
    [2001, 'PASS_LIVING_NOT_THE_SAME', 'failed'],
    [4201, 'USER_CANCELLATION', 'retry'],
    [9001, 'LIVING_OVERTIME', 'retry'],
    [9999, 'LIVING_NOT_START', 'retry'],
  ];

  test.each(CODES)('when FaceID answers code %i (%s), then the verdict is %s', async (resultCode, outcome, verdict) => {
    const { token, response } = await verifyOnce(shared, newUser(), { outcome, resultCode });
    expectVerdict(response, token.bizToken, verdict, outcome);
    expect(warnLinesOf(shared, response)).toEqual([]);
    const record = await getVerification(shared, await bearer('backend', BACKEND_SCOPE), response.body.verification_id);
    expect(record.body).toMatchObject({ result_code: resultCode, result_message: outcome });
  });

  test.each([
    [5555, 'USER_CANCELLATION'],
    [5555, 'SUCCESS'],
    [1001, 'SUCCESS'],
    [8000, 'LIVING_NOT_START'],
    [4000, 'USER_CANCELLATION'],
    [4300, 'USER_CANCELLATION'],
    [1999, 'SUCCESS'],
  ] as Array<[number, VerifyOutcome]>)(
    'when FaceID answers the unknown code %i (%s), then the verdict is failed and a warn line names the code',
    async (resultCode, outcome) => {
      const { token, response } = await verifyOnce(shared, newUser(), { outcome, resultCode });
      expectVerdict(response, token.bizToken, 'failed', outcome);
      const warns = warnLinesOf(shared, response);
      expect(warns).toHaveLength(1);
      expect(JSON.stringify(warns[0])).toContain(String(resultCode));
    },
  );
});

// ---------------------------------------------------------------------------------------------------------
describe('the policy (CONTRACT 7.2)', () => {
  test.each([
    [0.5, 'failed', 'ATTACK_SUSPECTED'],
    [0.93, 'failed', 'ATTACK_SUSPECTED'],
    [1, 'failed', 'ATTACK_SUSPECTED'],
    [0.49, 'passed', 'SUCCESS'],
    [0, 'passed', 'SUCCESS'],
  ])(
    'when a SUCCESS carries attack score %f (threshold 0.5), then the verdict is %s %s',
    async (attackScore, verdict, reason) => {
      const { token, response } = await verifyOnce(shared, newUser(), { attackScore });
      expectVerdict(response, token.bizToken, verdict, reason);
    },
  );

  test('when an attack score comes with a result that does not pass, then the verdict and reason stay the table’s', async () => {
    const failed = await verifyOnce(shared, newUser(), { outcome: 'PASS_LIVING_NOT_THE_SAME', attackScore: 0.9 });
    expectVerdict(failed.response, failed.token.bizToken, 'failed', 'PASS_LIVING_NOT_THE_SAME');
    const retry = await verifyOnce(shared, newUser(), { outcome: 'VIDEO_LACK_FRAMES', attackScore: 0.9 });
    expectVerdict(retry.response, retry.token.bizToken, 'retry', 'VIDEO_LACK_FRAMES');
  });

  test('when a client sends force_compare or verbose on its token request, then it answers 400 BAD_ARGUMENTS naming it: the policy is not the client’s', async () => {
    const target = await start({ POLICY_FORCE_COMPARE: '1', POLICY_FALSE_ACCEPT_RATE: '1e-4' });
    const form = validForm();
    for (const [name, value] of [
      ['force_compare', '0'],
      ['verbose', '0'],
    ]) {
      const response = await postToken(target, {
        ...form,
        fields: { ...form.fields, [name as string]: value as string },
      });
      expectProblem(response, 400, 'BAD_ARGUMENTS', name);
    }
    expect(target.sandbox.received).toHaveLength(0);
  });

  test('when POLICY_FORCE_COMPARE=1, then get_biz_token carries force_compare=1 and the attack score still decides a SUCCESS', async () => {
    const target = await start({ POLICY_FORCE_COMPARE: '1' });
    const low = await verifyOnce(target, newUser(), { attackScore: 0.1 });
    expect(target.sandbox.received.at(-1)?.fields.force_compare).toEqual(['1']);
    expectVerdict(low.response, low.token.bizToken, 'passed', 'SUCCESS');
    const high = await verifyOnce(target, newUser(), { attackScore: 0.7 });
    expectVerdict(high.response, high.token.bizToken, 'failed', 'ATTACK_SUSPECTED');
  });

  // The sandbox always answers attack_result outside the 4200 series (as FaceID does), so a passing result
  // without it comes from a stub FaceID that answers exactly that.
  test('when POLICY_FORCE_COMPARE=1 and a SUCCESS has no attack_result, then the verdict is failed ATTACK_SUSPECTED; without the policy it passes', async () => {
    const stub = await startStubFaceId({ result_code: 1000, result_message: 'SUCCESS', images: { image_best: 'x' } });
    defer(stub.close);
    for (const [forceCompare, verdict, reason] of [
      ['1', 'failed', 'ATTACK_SUSPECTED'],
      ['0', 'passed', 'SUCCESS'],
    ] as const) {
      const target = await start({ FACEID_BASE_URL: stub.url, POLICY_FORCE_COMPARE: forceCompare });
      const token = await issueToken(target, newUser());
      const response = await postVerification(target, token.authorization, {
        bizToken: token.bizToken,
        megliveData: Buffer.from('any package'),
      });
      expectVerdict(response, token.bizToken, verdict, reason);
    }
    expect(stub.verifyCalls()).toBe(2);
  });

  test('when POLICY_FALSE_ACCEPT_RATE=1e-4, then get_biz_token carries verbose=1 and a confidence below 69.32 fails BELOW_CONFIDENCE_THRESHOLD, at or above it passes', async () => {
    const target = await start({ POLICY_FALSE_ACCEPT_RATE: '1e-4' });
    const below = await verifyOnce(target, newUser(), { confidence: 69.31 }, validIdcardForm());
    expect(target.sandbox.received.at(-1)?.fields.verbose).toEqual(['1']);
    expectVerdict(below.response, below.token.bizToken, 'failed', 'BELOW_CONFIDENCE_THRESHOLD');
    const at = await verifyOnce(target, newUser(), { confidence: 69.32 }, validIdcardForm());
    expectVerdict(at.response, at.token.bizToken, 'passed', 'SUCCESS');
    const above = await verifyOnce(target, newUser(), { confidence: 86.63 });
    expectVerdict(above.response, above.token.bizToken, 'passed', 'SUCCESS');
    // 1e-3's threshold (62.17) is below 65, but the operator asked for 1e-4.
    const between = await verifyOnce(target, newUser(), { confidence: 65 });
    expectVerdict(between.response, between.token.bizToken, 'failed', 'BELOW_CONFIDENCE_THRESHOLD');
    // The backend sees the comparison the verdict came from.
    const record = await getVerification(
      target,
      await bearer('backend', BACKEND_SCOPE),
      below.response.body.verification_id,
    );
    expect(record.body).toMatchObject({
      verification: { idcard: { confidence: 69.31, thresholds: { '1e-4': 69.32 } } },
      result_message: 'SUCCESS',
      reason: 'BELOW_CONFIDENCE_THRESHOLD',
    });
  });

  test('when POLICY_FALSE_ACCEPT_RATE=1e-4 and an attack is suspected, then a low confidence does not hide the attack: failed either way', async () => {
    const target = await start({ POLICY_FALSE_ACCEPT_RATE: '1e-4' });
    const { token, response } = await verifyOnce(target, newUser(), { confidence: 90, attackScore: 0.8 });
    expectVerdict(response, token.bizToken, 'failed', 'ATTACK_SUSPECTED');
  });

  test('when POLICY_FALSE_ACCEPT_RATE is unset, then get_biz_token carries no verbose and a low confidence still passes', async () => {
    const target = await start();
    const { token, response } = await verifyOnce(target, newUser(), { confidence: 10 });
    expect(target.sandbox.received.at(-1)?.fields.verbose).toBeUndefined();
    expectVerdict(response, token.bizToken, 'passed', 'SUCCESS');
  });

  test('when POLICY_FALSE_ACCEPT_RATE=1e-4 and a SUCCESS has no verification, or one comparison below the threshold, then it fails BELOW_CONFIDENCE_THRESHOLD', async () => {
    const attack = { score: 0.1, threshold: 0.5, result: false };
    const thresholds = { '1e-3': 62.17, '1e-4': 69.32, '1e-5': 74.4, '1e-6': 78.04 };
    const answers: Array<[Record<string, unknown>, string, string]> = [
      [{ attack_result: attack }, 'failed', 'BELOW_CONFIDENCE_THRESHOLD'],
      [
        {
          attack_result: attack,
          verification: { ref1: { confidence: 90, thresholds }, ref2: { confidence: 69.3, thresholds } },
        },
        'failed',
        'BELOW_CONFIDENCE_THRESHOLD',
      ],
      [
        {
          attack_result: attack,
          verification: { ref1: { confidence: 90, thresholds }, ref2: { confidence: 70, thresholds } },
        },
        'passed',
        'SUCCESS',
      ],
    ];
    for (const [answer, verdict, reason] of answers) {
      const stub = await startStubFaceId({ result_code: 1000, result_message: 'SUCCESS', ...answer });
      defer(stub.close);
      const target = await start({ FACEID_BASE_URL: stub.url, POLICY_FALSE_ACCEPT_RATE: '1e-4' });
      const token = await issueToken(target, newUser());
      const response = await postVerification(target, token.authorization, {
        bizToken: token.bizToken,
        megliveData: Buffer.from('any package'),
      });
      expectVerdict(response, token.bizToken, verdict, reason);
    }
  });
});

// ---------------------------------------------------------------------------------------------------------
describe('ownership: only a token this service issued to this user, within its hour', () => {
  test('when the biz_token is unknown, malformed, another user’s or issued by another instance, then each is 404 BIZ_TOKEN_NOT_FOUND, alike, with no FaceID call', async () => {
    const owner = newUser();
    const intruder = newUser();
    const owned = await issueToken(shared, owner);
    // Issued by another instance that shares the sandbox but not the registry (no Redis): not issued here.
    const other = await startTestService({}, shared.sandbox);
    defer(other.close);
    const elsewhere = await issueToken(other, intruder);

    const before = shared.sandbox.verifyCount();
    const attempts: Array<[string, string, Buffer]> = [
      [intruder, `${Math.floor(Date.now() / 1000)},${randomUUID()}`, makePackage(shared, 'x')],
      [intruder, 'not a token at all ../../%00', makePackage(shared, 'y')],
      [intruder, 'x'.repeat(1000), makePackage(shared, 'z')],
      [intruder, owned.bizToken, makePackage(shared, owned.bizToken)],
      [intruder, elsewhere.bizToken, makePackage(shared, elsewhere.bizToken)],
    ];
    const bodies: unknown[] = [];
    for (const [user, bizToken, megliveData] of attempts) {
      const response = await postVerification(shared, user, { bizToken, megliveData });
      const body = expectProblem(response, 404, 'BIZ_TOKEN_NOT_FOUND');
      const { request_id: _requestId, ...rest } = body;
      bodies.push(rest);
      expect(response.text).not.toContain(bizToken);
    }
    for (const body of bodies) expect(body).toEqual(bodies[0]);
    expect(shared.sandbox.verifyCount()).toBe(before);

    // The intruder's attempt spent nothing: the owner still gets a verdict.
    const response = await postVerification(shared, owned.authorization, {
      bizToken: owned.bizToken,
      megliveData: makePackage(shared, owned.bizToken),
    });
    expectVerdict(response, owned.bizToken, 'passed', 'SUCCESS');
  });

  test('when the token was already verified by its owner, then another user with it still gets 404 BIZ_TOKEN_NOT_FOUND, not a replay', async () => {
    const { token, response } = await verifyOnce(shared, newUser());
    expect(response.status).toBe(201);
    const before = shared.sandbox.verifyCount();
    const intruder = await postVerification(shared, newUser(), {
      bizToken: token.bizToken,
      megliveData: makePackage(shared, token.bizToken),
    });
    expectProblem(intruder, 404, 'BIZ_TOKEN_NOT_FOUND');
    expect(intruder.headers['idempotent-replayed']).toBeUndefined();
    expect(intruder.text).not.toContain('verification_id');
    expect(shared.sandbox.verifyCount()).toBe(before);
  });
});

// ---------------------------------------------------------------------------------------------------------
describe.each([
  ['memory', false],
  ['redis', true],
])('once per token (%s)', (_kind, withRedis) => {
  const startOne = (env: Record<string, string> = {}): Promise<TestService> =>
    withRedis ? startWithRedis(env) : start(env);

  test('when the owner posts a verified token again, then it answers the same 201 body with Idempotent-Replayed: true and no FaceID call', async () => {
    const target = await startOne();
    const { token, response: first } = await verifyOnce(target, newUser(), { attackScore: 0.8 });
    const firstBody = expectVerdict(first, token.bizToken, 'failed', 'ATTACK_SUSPECTED');
    expect(first.headers['idempotent-replayed']).toBeUndefined();
    const calls = target.sandbox.verifyCount();

    const again = await postVerification(target, token.authorization, {
      bizToken: token.bizToken,
      megliveData: makePackage(target, token.bizToken, { outcome: 'SUCCESS', attackScore: 0 }),
    });
    expect(again.status).toBe(201);
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(again.body).toEqual(firstBody);
    expect(again.headers.location).toBe(first.headers.location);
    // Any later request with it, even without a package.
    const bare = await postVerification(target, token.authorization, { bizToken: token.bizToken });
    expect(bare.status).toBe(201);
    expect(bare.headers['idempotent-replayed']).toBe('true');
    expect(bare.body).toEqual(firstBody);
    expect(target.sandbox.verifyCount()).toBe(calls);
    // A replay is not a verification of its own.
    expect(logLineOf(target, again).upstream).toBeUndefined();
  });

  test('when two requests with one token arrive together, then FaceID is called once and both get the same body', async () => {
    const target = await startOne();
    target.sandbox.setScenario({ outcome: undefined, times: undefined, latencyMs: 300 });
    const user = newUser();
    const token = await issueToken(target, user);
    const megliveData = makePackage(target, token.bizToken);
    const calls = target.sandbox.verifyCount();
    const [a, b] = await Promise.all([
      postVerification(target, token.authorization, { bizToken: token.bizToken, megliveData }),
      postVerification(target, token.authorization, { bizToken: token.bizToken, megliveData }),
    ]);
    expect([a?.status, b?.status]).toEqual([201, 201]);
    expect(a?.body).toEqual(b?.body);
    expectVerdict(a as supertest.Response, token.bizToken, 'passed', 'SUCCESS');
    expect([a?.headers['idempotent-replayed'], b?.headers['idempotent-replayed']].sort()).toEqual(['true', undefined]);
    expect(target.sandbox.verifyCount()).toBe(calls + 1);
  });

  test('when a verification fails with MEGLIVE_DATA_ERROR, then nothing is stored and a later correct package gets a verdict', async () => {
    const target = await startOne();
    const token = await issueToken(target, newUser());
    const good = makePackage(target, token.bizToken, { outcome: 'PASS_LIVING_NOT_THE_SAME' });
    const bad = await postVerification(target, token.authorization, {
      bizToken: token.bizToken,
      megliveData: altered(good),
    });
    expectProblem(bad, 400, 'MEGLIVE_DATA_ERROR', 'meglive_data');
    const again = await promptly(
      postVerification(target, token.authorization, { bizToken: token.bizToken, megliveData: good }),
    );
    expectVerdict(again, token.bizToken, 'failed', 'PASS_LIVING_NOT_THE_SAME');
    expect(again.headers['idempotent-replayed']).toBeUndefined();
    expect(target.sandbox.verifyCount()).toBe(2);
  });

  test('when FaceID fails with a 5xx (retries spent), then nothing is stored and a later request gets a verdict', async () => {
    const target = await startOne({ FACEID_MAX_RETRIES: '0' });
    const token = await issueToken(target, newUser());
    target.sandbox.setScenario({ outcome: 'INTERNAL_ERROR', times: 1, latencyMs: 0 });
    const megliveData = makePackage(target, token.bizToken);
    const failed = await postVerification(target, token.authorization, { bizToken: token.bizToken, megliveData });
    expectProblem(failed, 502, 'UPSTREAM_ERROR');
    const again = await promptly(
      postVerification(target, token.authorization, { bizToken: token.bizToken, megliveData }),
    );
    expectVerdict(again, token.bizToken, 'passed', 'SUCCESS');
    expect(again.headers['idempotent-replayed']).toBeUndefined();
  });
});

describe('ownership with Redis: expiry and odd values', () => {
  /** The Redis keys under the prefix whose value contains `text`. */
  async function keysHolding(prefix: string, text: string): Promise<string[]> {
    const found: string[] = [];
    for (const key of await redis.keys(`${prefix}*`)) {
      if ((await redis.type(key)) === 'string' && ((await redis.get(key)) ?? '').includes(text)) found.push(key);
    }
    return found;
  }

  test('when a token’s hour is over, then it is 404 BIZ_TOKEN_NOT_FOUND like an unknown one, with no FaceID call', async () => {
    const prefix = freshPrefix();
    const target = await startWithRedis({}, prefix);
    const user = newUser();
    const token = await issueToken(target, user);
    // The service keeps the token for its hour and no longer.
    const [key, ...more] = await keysHolding(prefix, token.expiresAt);
    expect(more).toEqual([]);
    expect(key).toBeDefined();
    const ttl = await redis.pttl(key as string);
    expect(ttl).toBeGreaterThan(3_500_000);
    expect(ttl).toBeLessThanOrEqual(3_600_000);
    // Its hour is made to be over, as if an hour had passed (the record outlives it by a little).
    const past = new Date(Date.now() - 1_000).toISOString();
    const value = (await redis.get(key as string)) ?? '';
    await redis.set(key as string, value.replace(token.expiresAt, past), 'PX', 60_000);

    const calls = target.sandbox.verifyCount();
    const expired = await postVerification(target, user, {
      bizToken: token.bizToken,
      megliveData: makePackage(target, token.bizToken),
    });
    const unknown = await postVerification(target, user, {
      bizToken: `${Math.floor(Date.now() / 1000)},${randomUUID()}`,
      megliveData: makePackage(target, token.bizToken),
    });
    const { request_id: _a, ...expiredBody } = expectProblem(expired, 404, 'BIZ_TOKEN_NOT_FOUND');
    const { request_id: _b, ...unknownBody } = expectProblem(unknown, 404, 'BIZ_TOKEN_NOT_FOUND');
    expect(expiredBody).toEqual(unknownBody);
    expect(target.sandbox.verifyCount()).toBe(calls);
  });

  test('when a verdict is kept, then its record expires after VERIFICATION_RETENTION_HOURS', async () => {
    const prefix = freshPrefix();
    const target = await startWithRedis({ VERIFICATION_RETENTION_HOURS: '2' }, prefix);
    const { response } = await verifyOnce(target, newUser());
    expect(response.status).toBe(201);
    const keys = await keysHolding(prefix, response.body.verification_id);
    const ttls = await Promise.all(keys.map((key) => redis.pttl(key)));
    // The record (kept 2 h); any replay record lives no longer than the token's hour.
    expect(Math.max(...ttls)).toBeGreaterThan(2 * 3_600_000 - 60_000);
    expect(Math.max(...ttls)).toBeLessThanOrEqual(2 * 3_600_000);
    for (const ttl of ttls) expect(ttl).toBeGreaterThan(0);
  });
});

describe('ownership: any value that was not issued', () => {
  test.each([
    ['a 2 KB value', 'a'.repeat(2048)],
    ['a multibyte value', 'ключ,токен'],
    ['a value with a newline', 'line1\nline2'],
    ['a single space', ' '],
  ])('when biz_token is %s, then it is 404 BIZ_TOKEN_NOT_FOUND with no FaceID call', async (_label, bizToken) => {
    const calls = shared.sandbox.verifyCount();
    const response = await postVerification(shared, newUser(), {
      bizToken,
      megliveData: makePackage(shared, 'x'),
    });
    expectProblem(response, 404, 'BIZ_TOKEN_NOT_FOUND');
    expect(shared.sandbox.verifyCount()).toBe(calls);
  });
});

describe('once per token across instances sharing Redis', () => {
  test('when one instance issued the token and another verifies it, then it gets a verdict, and the first replays it without a FaceID call', async () => {
    const prefix = freshPrefix();
    const a = await startWithRedis({}, prefix);
    const b = await startTestService({ REDIS_URL, REDIS_KEY_PREFIX: prefix }, a.sandbox);
    defer(b.close);
    await untilRedisReady(b);
    const token = await issueToken(a, newUser());
    const megliveData = makePackage(a, token.bizToken);
    const first = await postVerification(b, token.authorization, { bizToken: token.bizToken, megliveData });
    const body = expectVerdict(first, token.bizToken, 'passed', 'SUCCESS');
    const calls = a.sandbox.verifyCount();
    const replay = await postVerification(a, token.authorization, { bizToken: token.bizToken, megliveData });
    expect(replay.status).toBe(201);
    expect(replay.headers['idempotent-replayed']).toBe('true');
    expect(replay.body).toEqual(body);
    expect(a.sandbox.verifyCount()).toBe(calls);
    // The record is shared too.
    expect((await getVerification(a, token.authorization, first.headers.location as string)).body).toEqual(body);
  });

  test('when two instances get one token at the same moment, then FaceID is called once and both answer the same body', async () => {
    const prefix = freshPrefix();
    const a = await startWithRedis({}, prefix);
    const b = await startTestService({ REDIS_URL, REDIS_KEY_PREFIX: prefix }, a.sandbox);
    defer(b.close);
    await untilRedisReady(b);
    const token = await issueToken(a, newUser());
    const megliveData = makePackage(a, token.bizToken, { outcome: 'PASS_LIVING_NOT_THE_SAME' });
    a.sandbox.setScenario({ outcome: undefined, times: undefined, latencyMs: 300 });
    const calls = a.sandbox.verifyCount();
    const [first, second] = await Promise.all([
      postVerification(a, token.authorization, { bizToken: token.bizToken, megliveData }),
      postVerification(b, token.authorization, { bizToken: token.bizToken, megliveData }),
    ]);
    expectVerdict(first, token.bizToken, 'failed', 'PASS_LIVING_NOT_THE_SAME');
    expect(second.status).toBe(201);
    expect(second.body).toEqual(first.body);
    expect(a.sandbox.verifyCount()).toBe(calls + 1);
  });
});

// ---------------------------------------------------------------------------------------------------------
describe('input errors', () => {
  let token: Awaited<ReturnType<typeof issueToken>>;
  let megliveData: Buffer;
  let calls: number;
  beforeEach(async () => {
    token = await issueToken(shared, newUser());
    megliveData = makePackage(shared, token.bizToken);
    calls = shared.sandbox.verifyCount();
  });
  /** None of the answers below may reach FaceID. */
  const expectNoFaceIdCall = (): void => expect(shared.sandbox.verifyCount()).toBe(calls);

  test('when biz_token is missing or empty, then it answers 400 MISSING_ARGUMENTS naming biz_token', async () => {
    expectProblem(
      await postVerification(shared, token.authorization, { megliveData }),
      400,
      'MISSING_ARGUMENTS',
      'biz_token',
    );
    expectProblem(
      await postVerification(shared, token.authorization, { bizToken: '', megliveData }),
      400,
      'MISSING_ARGUMENTS',
      'biz_token',
    );
    expectNoFaceIdCall();
  });

  test('when a meglive (or still) token comes without meglive_data, then it answers 400 MISSING_ARGUMENTS naming meglive_data, and the token stays usable', async () => {
    expectProblem(
      await postVerification(shared, token.authorization, { bizToken: token.bizToken }),
      400,
      'MISSING_ARGUMENTS',
      'meglive_data',
    );
    const still = await issueToken(shared, newUser(), validIdcardForm());
    expectProblem(
      await postVerification(shared, still.authorization, { bizToken: still.bizToken }),
      400,
      'MISSING_ARGUMENTS',
      'meglive_data',
    );
    expectNoFaceIdCall();
    expectVerdict(
      await promptly(postVerification(shared, token.authorization, { bizToken: token.bizToken, megliveData })),
      token.bizToken,
      'passed',
      'SUCCESS',
    );
  });

  test.each([
    ['an unknown field', { fields: [['extra', '1']] }, 'extra'],
    ['biz_no as a field', { fields: [['biz_no', 'abc']] }, 'biz_no'],
    ['a repeated biz_token', { fields: [['biz_token', 'again']] }, 'biz_token'],
    ['meglive_data as text', { fields: [['meglive_data', 'text']] }, 'meglive_data'],
    ['an unknown file', { files: [['photo', Buffer.from('x')]] }, 'photo'],
    ['biz_token as a file', { files: [['biz_token', Buffer.from('x')]] }, 'biz_token'],
    ['a repeated meglive_data', { files: [['meglive_data', Buffer.from('x')]] }, 'meglive_data'],
  ] as Array<[string, { fields?: Array<[string, string]>; files?: Array<[string, Buffer]> }, string]>)(
    'when the form has %s, then it answers 400 BAD_ARGUMENTS naming the field and FaceID is not called',
    async (_label, extra, param) => {
      const response = await postVerification(shared, token.authorization, {
        bizToken: token.bizToken,
        megliveData,
        ...extra,
      });
      expectProblem(response, 400, 'BAD_ARGUMENTS', param);
      expectNoFaceIdCall();
    },
  );

  test('when biz_token comes only as a file, then it answers 400 BAD_ARGUMENTS naming biz_token', async () => {
    const response = await postVerification(shared, token.authorization, {
      megliveData,
      files: [['biz_token', Buffer.from(token.bizToken)]],
    });
    expectProblem(response, 400, 'BAD_ARGUMENTS', 'biz_token');
    expectNoFaceIdCall();
  });

  test('when the body is not multipart, then it answers 415 UNSUPPORTED_MEDIA_TYPE', async () => {
    for (const request of [
      shared
        .http()
        .post(VERIFICATIONS_PATH)
        .set('Authorization', token.authorization)
        .send({ biz_token: token.bizToken }),
      shared
        .http()
        .post(VERIFICATIONS_PATH)
        .set('Authorization', token.authorization)
        .type('form')
        .send({ biz_token: token.bizToken }),
    ]) {
      expectProblem(await request, 415, 'UNSUPPORTED_MEDIA_TYPE');
    }
    expectNoFaceIdCall();
  });

  test('when Content-Length announces more than 20,905,984 bytes, then it answers 413 PAYLOAD_TOO_LARGE at once', async () => {
    const server = http.createServer(shared.service.app);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    defer(
      () =>
        new Promise<void>((resolve) => {
          server.closeAllConnections();
          server.close(() => resolve());
        }),
    );
    const port = (server.address() as AddressInfo).port;
    const answer = await announceUpload(
      port,
      { Authorization: token.authorization },
      20_905_985,
      '',
      VERIFICATIONS_PATH,
    );
    expectProblemAnswer(
      { status: answer.status, headers: answer.headers, body: JSON.parse(answer.text) },
      413,
      'PAYLOAD_TOO_LARGE',
    );
    expectNoFaceIdCall();
  });

  test('when the package was altered, then it answers 400 MEGLIVE_DATA_ERROR naming meglive_data', async () => {
    const response = await postVerification(shared, token.authorization, {
      bizToken: token.bizToken,
      megliveData: altered(megliveData),
    });
    expectProblem(response, 400, 'MEGLIVE_DATA_ERROR', 'meglive_data');
    expect(response.text).not.toContain('/faceid/');
  });

  test('when the package is another token’s, then it answers 400 MEGLIVE_DATA_BIZ_TOKEN_NOT_MATCH naming meglive_data', async () => {
    const other = await issueToken(shared, newUser());
    const response = await postVerification(shared, token.authorization, {
      bizToken: token.bizToken,
      megliveData: makePackage(shared, other.bizToken),
    });
    expectProblem(response, 400, 'MEGLIVE_DATA_BIZ_TOKEN_NOT_MATCH', 'meglive_data');
  });

  test('when no JWT (or a bad one) is sent, then it answers 401 UNAUTHENTICATED with no FaceID call', async () => {
    const form = { bizToken: token.bizToken, megliveData };
    expectProblem(await postVerification(shared, '', form), 401, 'UNAUTHENTICATED');
    expectProblem(await postVerification(shared, 'Bearer not.a.jwt', form), 401, 'UNAUTHENTICATED');
    const foreign = await signToken({ sub: 'x' }, 'another-secret-that-is-long-enough-0123456789');
    expectProblem(await postVerification(shared, `Bearer ${foreign}`, form), 401, 'UNAUTHENTICATED');
    expectNoFaceIdCall();
  });
});

// ---------------------------------------------------------------------------------------------------------
describe('upstream failures', () => {
  test.each([['INTERNAL_ERROR'], ['CONCURRENCY_LIMIT_EXCEEDED'], ['CONCURRENCY_LIMIT_EXCEEDED_429']] as const)(
    'when FaceID answers %s once, then the call is retried with a fresh sign and the verdict is 201',
    async (outcome) => {
      const target = await start();
      const token = await issueToken(target, newUser());
      target.sandbox.setScenario({ outcome, times: 1, latencyMs: 0 });
      const response = await postVerification(target, token.authorization, {
        bizToken: token.bizToken,
        megliveData: makePackage(target, token.bizToken),
      });
      expectVerdict(response, token.bizToken, 'passed', 'SUCCESS');
      expect(target.sandbox.verifyCount()).toBe(2);
      const signs = target.sandbox.receivedVerifications.map((received) => received.fields.sign?.[0]);
      expect(new Set(signs).size).toBe(2);
      expect((logLineOf(target, response).upstream as Record<string, unknown>).attempts).toBe(2);
    },
  );

  test('when FaceID drops the connection after the request was sent, then it answers 502 UPSTREAM_ERROR after exactly 1 attempt, and nothing is stored', async () => {
    const target = await start({ FACEID_MAX_RETRIES: '2' });
    const token = await issueToken(target, newUser());
    target.sandbox.setScenario({ outcome: 'DROP', times: 1, latencyMs: 0 });
    const megliveData = makePackage(target, token.bizToken);
    const response = await postVerification(target, token.authorization, { bizToken: token.bizToken, megliveData });
    expectProblem(response, 502, 'UPSTREAM_ERROR');
    expect(target.sandbox.verifyCount()).toBe(1);
    expect((logLineOf(target, response).upstream as Record<string, unknown>).attempts).toBe(1);
    // The app may try again: the error was not stored.
    const again = await promptly(
      postVerification(target, token.authorization, { bizToken: token.bizToken, megliveData }),
    );
    expectVerdict(again, token.bizToken, 'passed', 'SUCCESS');
  });

  test('when the connection to FaceID is refused, then the call is retried (upstream.attempts > 1) and ends 502 UPSTREAM_ERROR', async () => {
    // The token comes from an instance that reaches the sandbox; one sharing its Redis verifies it against a closed port.
    const prefix = freshPrefix();
    const issuer = await startWithRedis({}, prefix);
    const closedPort = await freePort();
    const verifier = await startTestService(
      {
        REDIS_URL,
        REDIS_KEY_PREFIX: prefix,
        FACEID_BASE_URL: `http://127.0.0.1:${closedPort}`,
        FACEID_MAX_RETRIES: '2',
        FACEID_TIMEOUT_MS: '3000',
      },
      issuer.sandbox,
    );
    defer(verifier.close);
    await untilRedisReady(verifier);
    const token = await issueToken(issuer, newUser());
    const megliveData = makePackage(issuer, token.bizToken);
    const response = await postVerification(verifier, token.authorization, { bizToken: token.bizToken, megliveData });
    expectProblem(response, 502, 'UPSTREAM_ERROR');
    const upstream = logLineOf(verifier, response).upstream as Record<string, unknown>;
    expect(upstream.attempts).toBe(3);
    // Nothing was stored: the instance that reaches FaceID gets a verdict for the token.
    expectVerdict(
      await promptly(postVerification(issuer, token.authorization, { bizToken: token.bizToken, megliveData })),
      token.bizToken,
      'passed',
      'SUCCESS',
    );
  });

  test('when FaceID stays busy (CONCURRENCY_LIMIT_EXCEEDED after every retry), then it answers 503 UPSTREAM_BUSY with Retry-After, and nothing is stored', async () => {
    const target = await start({ FACEID_MAX_RETRIES: '1' });
    const token = await issueToken(target, newUser());
    target.sandbox.setScenario({ outcome: 'CONCURRENCY_LIMIT_EXCEEDED_429', times: 2, latencyMs: 0 });
    const megliveData = makePackage(target, token.bizToken);
    const busy = await postVerification(target, token.authorization, { bizToken: token.bizToken, megliveData });
    expectProblem(busy, 503, 'UPSTREAM_BUSY');
    expect(Number(busy.headers['retry-after'])).toBeGreaterThan(0);
    expect(target.sandbox.verifyCount()).toBe(2);
    const again = await promptly(
      postVerification(target, token.authorization, { bizToken: token.bizToken, megliveData }),
    );
    expectVerdict(again, token.bizToken, 'passed', 'SUCCESS');
  });

  test('when FaceID answers its plain-text 413, then it answers 413 PAYLOAD_TOO_LARGE, and nothing is stored', async () => {
    const stub = await startStubFaceId({}, { status: 413, text: 'Request Entity Too Large' });
    defer(stub.close);
    const target = await start({ FACEID_BASE_URL: stub.url });
    const token = await issueToken(target, newUser());
    const form = { bizToken: token.bizToken, megliveData: Buffer.from('any package') };
    expectProblem(await postVerification(target, token.authorization, form), 413, 'PAYLOAD_TOO_LARGE');
    expectProblem(await postVerification(target, token.authorization, form), 413, 'PAYLOAD_TOO_LARGE');
    expect(stub.verifyCalls()).toBe(2);
  });

  test('when FaceID never answers, then it answers 504 UPSTREAM_TIMEOUT within FACEID_TIMEOUT_MS, and a later request gets a verdict', async () => {
    const target = await start({ FACEID_TIMEOUT_MS: '300' });
    const token = await issueToken(target, newUser());
    target.sandbox.setScenario({ outcome: 'HANG', times: 1, latencyMs: 0 });
    const megliveData = makePackage(target, token.bizToken);
    const started = performance.now();
    const response = await postVerification(target, token.authorization, { bizToken: token.bizToken, megliveData });
    expectProblem(response, 504, 'UPSTREAM_TIMEOUT');
    expect(performance.now() - started).toBeLessThan(2_000);
    const again = await promptly(
      postVerification(target, token.authorization, { bizToken: token.bizToken, megliveData }),
    );
    expectVerdict(again, token.bizToken, 'passed', 'SUCCESS');
  });
});

// ---------------------------------------------------------------------------------------------------------
describe('logs and records', () => {
  test('when a verification is answered, then its log line carries the route, the user pseudonym, upstream.faceidRequestId and upstream.resultCode', async () => {
    const user = newUser();
    const { response } = await verifyOnce(shared, user, { outcome: 'USER_CANCELLATION' });
    const line = logLineOf(shared, response);
    const upstream = line.upstream as Record<string, unknown>;
    expect(upstream.resultCode).toBe(4200);
    expect(upstream.faceidRequestId).toMatch(/^\d{10},[0-9a-f-]{36}$/);
    expect(upstream.attempts).toBe(1);
    expect(line.res).toEqual({ statusCode: 201 });
    expect(typeof line.user).toBe('string');
    expect(JSON.stringify(line)).not.toContain(user);
  });

  test('when the flow runs at LOG_LEVEL=trace, then no line holds the package, the image_best, a JWT or a sign', async () => {
    const target = await start({ LOG_LEVEL: 'trace' });
    const imageBest = await sandboxImageBest(target);
    const user = newUser();
    const token = await issueToken(target, user);
    const megliveData = makePackage(target, token.bizToken);
    const otherToken = await issueToken(target, user);
    const otherPackage = makePackage(target, otherToken.bizToken, { outcome: 'FAIL_LIVING_FACE_ATTACK' });
    const form = { bizToken: token.bizToken, megliveData };
    expect(
      (
        await postVerification(target, token.authorization, {
          bizToken: token.bizToken,
          megliveData: altered(megliveData),
        })
      ).status,
    ).toBe(400);
    expect((await postVerification(target, token.authorization, form)).status).toBe(201);
    expect((await postVerification(target, token.authorization, form)).status).toBe(201);
    expect(
      (
        await postVerification(target, otherToken.authorization, {
          bizToken: otherToken.bizToken,
          megliveData: otherPackage,
        })
      ).status,
    ).toBe(201);
    const backend = await bearer('backend', BACKEND_SCOPE);
    const last = target.sandbox.receivedVerifications.length;
    expect(last).toBeGreaterThanOrEqual(3);

    const text = target.log.text();
    expect(text.length).toBeGreaterThan(0);
    const packages = [megliveData, otherPackage, altered(megliveData)];
    const secrets: Array<[string, string]> = [
      ['image_best', imageBest],
      ['image_best prefix', imageBest.slice(0, 40)],
      ['JWT', token.authorization.slice('Bearer '.length)],
      ['JWT', otherToken.authorization.slice('Bearer '.length)],
      ['JWT', backend.slice('Bearer '.length)],
      ['api_secret', SANDBOX_SECRET],
      ...packages.flatMap(
        (bytes): Array<[string, string]> => [
          ['package base64', bytes.toString('base64')],
          ['package hex', bytes.toString('hex')],
          ['package tag base64', bytes.subarray(-32).toString('base64')],
          ['package tag hex', bytes.subarray(-32).toString('hex')],
          ['package content', bytes.subarray(13, -32).toString('utf8')],
        ],
      ),
      ...[...target.sandbox.received, ...target.sandbox.receivedVerifications].flatMap((received) =>
        (received.fields.sign ?? []).map((sign): [string, string] => ['sign', sign]),
      ),
    ];
    const found = secrets.filter(([, secret]) => text.includes(secret)).map(([label]) => label);
    expect(found).toEqual([]);
    expect(text).not.toContain('"outcome":"SUCCESS"');
  });

  test('when the flow ran with Redis, then no key under the prefix holds the image_best, a JWT or the package', async () => {
    const prefix = freshPrefix();
    const target = await startWithRedis({ LOG_LEVEL: 'trace' }, prefix);
    const imageBest = await sandboxImageBest(target);
    const user = newUser();
    const { token, response } = await verifyOnce(target, user, { confidence: 80 });
    expect(response.status).toBe(201);
    const replay = await postVerification(target, token.authorization, { bizToken: token.bizToken });
    expect(replay.headers['idempotent-replayed']).toBe('true');
    const backend = await bearer('backend', BACKEND_SCOPE);
    expect((await getVerification(target, backend, response.body.verification_id)).status).toBe(200);

    const keys = await redis.keys(`${prefix}*`);
    expect(keys.length).toBeGreaterThan(0);
    const values: string[] = [];
    for (const key of keys) {
      const type = await redis.type(key);
      if (type === 'string') values.push((await redis.get(key)) ?? '');
      else if (type === 'hash') values.push(JSON.stringify(await redis.hgetall(key)));
      else if (type === 'list') values.push(JSON.stringify(await redis.lrange(key, 0, -1)));
      else if (type === 'set') values.push(JSON.stringify(await redis.smembers(key)));
      else if (type === 'zset') values.push(JSON.stringify(await redis.zrange(key, '0', '-1', 'WITHSCORES')));
      else if (type === 'stream') values.push(JSON.stringify(await redis.xrange(key, '-', '+')));
      values.push(key);
    }
    const all = values.join('\n');
    // The verdict is in there (so the scan read the right keys) ...
    expect(all).toContain(response.body.verification_id);
    // ... but not the image, the JWTs or the package.
    const megliveData = makePackage(target, token.bizToken, { confidence: 80 });
    for (const secret of [
      imageBest,
      imageBest.slice(0, 40),
      'image_best',
      token.authorization.slice('Bearer '.length),
      backend.slice('Bearer '.length),
      megliveData.toString('base64'),
      megliveData.subarray(-32).toString('base64'),
    ]) {
      expect(all).not.toContain(secret);
    }
  });
});

// ---------------------------------------------------------------------------------------------------------
describe('metrics and the OpenAPI document', () => {
  /** The value of `verifications_total` for one verdict and reason (0 when absent). */
  const verdictCount = (text: string, verdict: string, reason: string): number => {
    for (const line of text.split('\n')) {
      if (!line.startsWith('verifications_total{')) continue;
      if (line.includes(`verdict="${verdict}"`) && line.includes(`reason="${reason}"`)) {
        return Number(line.split(' ').at(-1));
      }
    }
    return 0;
  };

  test('when verdicts are reached, then verifications_total counts them by verdict and reason; errors and replays count nothing', async () => {
    const target = await start();
    const passed = await verifyOnce(target, newUser());
    await verifyOnce(target, newUser());
    await verifyOnce(target, newUser(), { attackScore: 0.9 });
    await verifyOnce(target, newUser(), { outcome: 'USER_TIMEOUT' });
    await verifyOnce(target, newUser(), { outcome: 'NO_ID_PHOTO', resultCode: 3101 });
    await verifyOnce(target, newUser(), { outcome: 'SUCCESS', resultCode: 5555 });
    // A replay and an error.
    expect(
      (await postVerification(target, passed.token.authorization, { bizToken: passed.token.bizToken })).headers[
        'idempotent-replayed'
      ],
    ).toBe('true');
    const spare = await issueToken(target, newUser());
    const bad = await postVerification(target, spare.authorization, {
      bizToken: spare.bizToken,
      megliveData: altered(makePackage(target, spare.bizToken)),
    });
    expect(bad.status).toBe(400);

    const metrics = await target.http().get('/metrics');
    expect(metrics.status).toBe(200);
    expect(metrics.text).toMatch(/# TYPE verifications_total counter/);
    expect(verdictCount(metrics.text, 'passed', 'SUCCESS')).toBe(2);
    expect(verdictCount(metrics.text, 'failed', 'ATTACK_SUSPECTED')).toBe(1);
    expect(verdictCount(metrics.text, 'retry', 'USER_TIMEOUT')).toBe(1);
    expect(verdictCount(metrics.text, 'retry', 'NO_ID_PHOTO')).toBe(1);
    const failedSuccess =
      verdictCount(metrics.text, 'failed', 'SUCCESS') + verdictCount(metrics.text, 'failed', 'OTHER');
    expect(failedSuccess).toBe(1);
    const total = metrics.text
      .split('\n')
      .filter((line) => line.startsWith('verifications_total{'))
      .reduce((sum, line) => sum + Number(line.split(' ').at(-1)), 0);
    expect(total).toBe(6);
  });

  test('when /openapi.json is read, then it has POST /v1/verifications, GET /v1/verifications/{verification_id}, the verification.completed webhook and every verdict row', async () => {
    const response = await shared.http().get('/openapi.json');
    expect(response.status).toBe(200);
    const document = response.body as {
      paths: Record<string, Record<string, unknown>>;
      webhooks?: Record<string, unknown>;
    };
    expect(document.paths['/v1/verifications']?.post).toBeDefined();
    expect(document.paths['/v1/verifications/{verification_id}']?.get).toBeDefined();
    expect(document.webhooks?.['verification.completed']).toBeDefined();
    const post = JSON.stringify(document.paths['/v1/verifications']?.post);
    for (const code of ['BIZ_TOKEN_NOT_FOUND', 'MEGLIVE_DATA_ERROR', 'MEGLIVE_DATA_BIZ_TOKEN_NOT_MATCH']) {
      expect(JSON.stringify(document)).toContain(code);
    }
    // Every row of the table the service decides with, as a row of the documented table.
    const strings: string[] = [];
    const collect = (value: unknown): void => {
      if (typeof value === 'string') strings.push(value);
      else if (Array.isArray(value)) value.forEach(collect);
      else if (typeof value === 'object' && value !== null) Object.values(value).forEach(collect);
    };
    collect(document.paths['/v1/verifications']?.post);
    const verdictText = strings.filter((text) => text.includes("| FaceID's result | verdict |")).join('\n');
    expect(verdictText.length).toBeGreaterThan(0);
    for (const rule of VERDICT_TABLE) expect(verdictText).toContain(`| ${rule.faceid} | \`${rule.verdict}\` |`);
    for (const reason of ['ATTACK_SUSPECTED', 'BELOW_CONFIDENCE_THRESHOLD']) expect(post).toContain(reason);
  });
});
