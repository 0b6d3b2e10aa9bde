import { randomBytes } from 'node:crypto';
import { Webhook } from 'standardwebhooks';
import { BIZ_TOKEN_LIFETIME_MS } from '../src/faceid/parameters';
import { freshSign } from '../src/faceid/sign';
import { inspectImage } from '../src/images/inspect-image';
import { IssuedTokens, type NewIssuedToken } from '../src/sandbox/issued-tokens';
import { decodeMeglivePackage, encodeMeglivePackage, packageKey } from '../src/sandbox/meglive-package';
import { type Sandbox, VERIFY_PATH } from '../src/sandbox/sandbox-server';
import { jpeg } from './fixtures/images';
import { announceUpload } from './helpers/raw-request';
import { SANDBOX_KEY, SANDBOX_SECRET, startTestSandbox } from './helpers/test-service';

/**
 * The sandbox's App-Verify, its package maker and its webhook sink, spoken to over real HTTP with Node's
 * own fetch and FormData, answers checked in FaceID's formats.
 * @see ../shared/seed/App-Verify.md
 */
const FACEID_REQUEST_ID = /^\d{10},[0-9a-f-]{36}$/;
const THRESHOLDS = { '1e-3': 62.17, '1e-4': 69.32, '1e-5': 74.4, '1e-6': 78.04 };

let sandbox: Sandbox;
beforeAll(async () => {
  sandbox = await startTestSandbox();
});
afterAll(() => sandbox.close());
afterEach(async () => {
  // No test leaves a scenario, a sink status or deliveries behind for the next one.
  await fetch(`${sandbox.url}/sandbox/scenario`, { method: 'DELETE' });
  sandbox.setWebhookStatus(204);
  sandbox.clearWebhooks();
});

/** A form part: text, or a file. Pairs rather than an object, so a test can repeat a name. */
type Part = [name: string, value: string | Buffer];

interface Answer {
  status: number;
  contentType: string;
  bytes: Buffer;
  json: Record<string, unknown> | undefined;
}

async function toAnswer(response: Response): Promise<Answer> {
  const bytes = Buffer.from(await response.arrayBuffer());
  let json: Record<string, unknown> | undefined;
  try {
    json = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>;
  } catch {
    json = undefined;
  }
  return { status: response.status, contentType: response.headers.get('content-type') ?? '', bytes, json };
}

async function postForm(path: string, parts: Part[], target: Sandbox = sandbox): Promise<Answer> {
  const form = new FormData();
  for (const [name, value] of parts) {
    if (typeof value === 'string') form.append(name, value);
    else form.append(name, new Blob([new Uint8Array(value)]), `${name}.bin`);
  }
  return toAnswer(await fetch(`${target.url}${path}`, { method: 'POST', body: form }));
}

const signParts = (): Part[] => [
  ['sign', freshSign(SANDBOX_KEY, SANDBOX_SECRET)],
  ['sign_version', 'hmac_sha1'],
];

interface TokenRequest {
  /** Merged over the defaults; undefined drops a default. */
  fields?: Record<string, string | undefined>;
  files?: Record<string, Buffer>;
}

/** A biz_token from the sandbox's get_biz_token: comparison_type 0, meglive, verbose, unless told otherwise. */
async function issueToken(request: TokenRequest = {}): Promise<string> {
  const fields = { comparison_type: '0', liveness_type: 'meglive', uuid: 'verify-test-user', verbose: '1' };
  const parts: Part[] = [
    ...signParts(),
    ...Object.entries({ ...fields, ...request.fields }).filter(
      (entry): entry is [string, string] => entry[1] !== undefined,
    ),
    ...Object.entries(request.files ?? { image_ref1: jpeg(32, 32) }),
  ];
  const answer = await postForm('/faceid/v3/sdk/get_biz_token', parts);
  expect(answer.status).toBe(200);
  return answer.json?.biz_token as string;
}

const idcardToken = (files: Record<string, Buffer>): Promise<string> =>
  issueToken({
    fields: {
      comparison_type: '1',
      liveness_type: 'still',
      idcard_name: '张三',
      idcard_number: '11010519491231002X',
      uuid: undefined,
    },
    files,
  });

/** `POST /sandbox/meglive-data` as curl -F sends it; `urlencoded` as curl -d does. */
async function megliveData(fields: Record<string, string>, urlencoded = false): Promise<Answer> {
  if (!urlencoded) return postForm('/sandbox/meglive-data', Object.entries(fields));
  const response = await fetch(`${sandbox.url}/sandbox/meglive-data`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(fields).toString(),
  });
  return toAnswer(response);
}

async function packageFor(bizToken: string, outcome = 'SUCCESS', extra: Record<string, string> = {}): Promise<Buffer> {
  const answer = await megliveData({ biz_token: bizToken, outcome, ...extra });
  expect(answer.status).toBe(200);
  return answer.bytes;
}

const verify = (bizToken: string | undefined, megliveDataBytes?: Buffer, extra: Part[] = []): Promise<Answer> =>
  postForm(VERIFY_PATH, [
    ...signParts(),
    ...(bizToken === undefined ? [] : ([['biz_token', bizToken]] as Part[])),
    ...(megliveDataBytes === undefined ? [] : ([['meglive_data', megliveDataBytes]] as Part[])),
    ...extra,
  ]);

function expectFaceIdError(answer: Answer, status: number, error: string): void {
  expect({ status: answer.status, error: answer.json?.error }).toEqual({ status, error });
  expect(answer.contentType).toMatch(/^application\/json/);
  expect(answer.json?.request_id).toMatch(FACEID_REQUEST_ID);
  expect(answer.json?.result_code).toBeUndefined();
}

const putScenario = (scenario: Record<string, unknown>): Promise<Response> =>
  fetch(`${sandbox.url}/sandbox/scenario`, {
    method: 'PUT',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(scenario),
  });

describe('the sandbox verify: result codes', () => {
  test.each([
    ['SUCCESS', 1000, 86.63, { score: 0.26, threshold: 0.5, result: false }],
    ['PASS_LIVING_NOT_THE_SAME', 2000, 30.5, { score: 0.26, threshold: 0.5, result: false }],
    ['ID_NUMBER_NAME_NOT_MATCH', 3000, undefined, { score: 0.26, threshold: 0.5, result: false }],
    ['DATA_SOURCE_ERROR', 3000, undefined, { score: 0.26, threshold: 0.5, result: false }],
    ['FAIL_LIVING_FACE_ATTACK', 4100, undefined, { score: 0.93, threshold: 0.5, result: true }],
    ['VIDEO_LACK_FRAMES', 4100, undefined, { score: 0.26, threshold: 0.5, result: false }],
    ['USER_CANCELLATION', 4200, undefined, undefined],
    ['ACTION_ERROR', 4200, undefined, undefined],
    ['LIVING_OVERTIME', 9000, undefined, { score: 0.26, threshold: 0.5, result: false }],
  ])(
    'when a verbose token is verified with a %s package, then it answers 200 with code %d, the verification and attack_result of its series',
    async (outcome, code, confidence, attackResult) => {
      const bizToken = await issueToken();
      const answer = await verify(bizToken, await packageFor(bizToken, outcome));
      expect(answer.status).toBe(200);
      expect(answer.contentType).toMatch(/^application\/json/);
      expect(answer.json).toMatchObject({ result_code: code, result_message: outcome, biz_no: '' });
      expect(answer.json?.request_id).toMatch(FACEID_REQUEST_ID);
      expect(typeof answer.json?.time_used).toBe('number');
      expect(answer.json?.error).toBeUndefined();
      if (confidence === undefined) expect(answer.json).not.toHaveProperty('verification');
      else expect(answer.json?.verification).toEqual({ ref1: { confidence, thresholds: THRESHOLDS } });
      if (attackResult === undefined) expect(answer.json).not.toHaveProperty('attack_result');
      else expect(answer.json?.attack_result).toEqual(attackResult);
    },
  );

  test('when the package gives confidence, attack_score and result_code, then the answer carries them', async () => {
    const bizToken = await issueToken();
    const bytes = await packageFor(bizToken, 'SUCCESS', { confidence: '71.5', attack_score: '0.61' });
    const answer = await verify(bizToken, bytes);
    expect(answer.json?.verification).toEqual({ ref1: { confidence: 71.5, thresholds: THRESHOLDS } });
    expect(answer.json?.attack_result).toEqual({ score: 0.61, threshold: 0.5, result: true });

    const other = await issueToken();
    const dataSource = await verify(other, await packageFor(other, 'DATA_SOURCE_ERROR', { result_code: '3100' }));
    expect(dataSource.json).toMatchObject({ result_code: 3100, result_message: 'DATA_SOURCE_ERROR' });
  });

  test('when a package forces a code FaceID may add later, then that code is answered with the outcome message', async () => {
    const bizToken = await issueToken();
    const answer = await verify(bizToken, await packageFor(bizToken, 'USER_TIMEOUT', { result_code: '4300' }));
    expect(answer.json).toMatchObject({ result_code: 4300, result_message: 'USER_TIMEOUT' });
    // 4300 is not the 4200 series, so it has an attack_result.
    expect(answer.json?.attack_result).toEqual({ score: 0.26, threshold: 0.5, result: false });
  });

  test('when the token had a biz_no, then verify echoes it and images.image_best is a real JPEG', async () => {
    const bizToken = await issueToken({ fields: { biz_no: 'order-42' } });
    const answer = await verify(bizToken, await packageFor(bizToken));
    expect(answer.json?.biz_no).toBe('order-42');
    const images = answer.json?.images as { image_best: string };
    expect(inspectImage(Buffer.from(images.image_best, 'base64'))).toMatchObject({ ok: true, format: 'jpeg' });
  });
});

describe('the sandbox verify: verification by what the token was issued with', () => {
  test('when the token was not issued with verbose=1, then SUCCESS has no verification', async () => {
    const bizToken = await issueToken({ fields: { verbose: '0' } });
    const answer = await verify(bizToken, await packageFor(bizToken));
    expect(answer.json?.result_code).toBe(1000);
    expect(answer.json).not.toHaveProperty('verification');
    expect(answer.json).toHaveProperty('attack_result');
  });

  test('when a comparison_type 1 token had image_ref2 only, then verification has idcard and ref2', async () => {
    const bizToken = await idcardToken({ image_ref2: jpeg(32, 32) });
    const answer = await verify(bizToken, await packageFor(bizToken));
    expect(Object.keys(answer.json?.verification as object).sort()).toEqual(['idcard', 'ref2']);
  });

  test('when a comparison_type 1 token had both reference images, then verification has idcard, ref1 and ref2', async () => {
    const bizToken = await idcardToken({ image_ref1: jpeg(32, 32), image_ref2: jpeg(24, 24) });
    const answer = await verify(bizToken, await packageFor(bizToken, 'PASS_LIVING_NOT_THE_SAME'));
    const expected = { confidence: 30.5, thresholds: THRESHOLDS };
    expect(answer.json?.verification).toEqual({ idcard: expected, ref1: expected, ref2: expected });
  });

  test('when a comparison_type 1 token had no reference image, then verification has idcard only', async () => {
    const bizToken = await idcardToken({});
    const answer = await verify(bizToken, await packageFor(bizToken));
    expect(Object.keys(answer.json?.verification as object)).toEqual(['idcard']);
  });
});

describe('the sandbox verify: what it refuses', () => {
  test.each([
    ['the first byte (the magic)', 0],
    ['the version byte', 8],
    ['a length byte', 12],
    ['a content byte', 20],
    ['the last byte (the tag)', -1],
  ])('when %s of a package is altered, then it answers 400 MEGLIVE_DATA_ERROR', async (_what, position) => {
    const bizToken = await issueToken();
    const bytes = await packageFor(bizToken);
    const at = position < 0 ? bytes.length + position : position;
    bytes[at] = (bytes[at] ?? 0) ^ 0x01;
    expectFaceIdError(await verify(bizToken, bytes), 400, 'MEGLIVE_DATA_ERROR');
  });

  test.each([
    ['truncated', (bytes: Buffer) => bytes.subarray(0, bytes.length - 1)],
    ['one byte longer', (bytes: Buffer) => Buffer.concat([bytes, Buffer.from([0])])],
    ['empty', () => Buffer.alloc(0)],
    ['a JPEG', () => jpeg(16, 16)],
  ])('when the package is %s, then it answers 400 MEGLIVE_DATA_ERROR', async (_what, change) => {
    const bizToken = await issueToken();
    expectFaceIdError(await verify(bizToken, change(await packageFor(bizToken))), 400, 'MEGLIVE_DATA_ERROR');
  });

  test('when a package made with another secret is sent, then it answers 400 MEGLIVE_DATA_ERROR', async () => {
    const bizToken = await issueToken();
    const forged = encodeMeglivePackage({ bizToken, outcome: 'SUCCESS' }, packageKey('another-secret'));
    expectFaceIdError(await verify(bizToken, forged), 400, 'MEGLIVE_DATA_ERROR');
  });

  test('when another token’s package is sent, then it answers 400 MEGLIVE_DATA_BIZ_TOKEN_NOT_MATCH and both tokens stay usable', async () => {
    const first = await issueToken();
    const second = await issueToken();
    const secondPackage = await packageFor(second);
    expectFaceIdError(await verify(first, secondPackage), 400, 'MEGLIVE_DATA_BIZ_TOKEN_NOT_MATCH');
    expect((await verify(first, await packageFor(first))).status).toBe(200);
    expect((await verify(second, secondPackage)).status).toBe(200);
  });

  test('when a token is verified a second time, then it answers 400 BAD_ARGUMENTS: biz_token', async () => {
    const bizToken = await issueToken();
    const bytes = await packageFor(bizToken);
    expect((await verify(bizToken, bytes)).status).toBe(200);
    expectFaceIdError(await verify(bizToken, bytes), 400, 'BAD_ARGUMENTS: biz_token');
  });

  test('when two verifies of one token arrive together, then exactly one gets 200', async () => {
    const bizToken = await issueToken();
    const bytes = await packageFor(bizToken);
    // A latency holds both requests until the answer is due: the check and the marking must still be one.
    expect((await putScenario({ latencyMs: 150 })).status).toBe(200);
    const answers = await Promise.all([verify(bizToken, bytes), verify(bizToken, bytes)]);
    expect(answers.map((answer) => answer.status).sort()).toEqual([200, 400]);
  });

  test.each([
    ['a token the sandbox never issued', '1765000000,00000000-0000-4000-8000-000000000000'],
    ['an empty biz_token', ''],
  ])('when the biz_token is %s, then it answers 400 BAD_ARGUMENTS: biz_token', async (_what, bizToken) => {
    expectFaceIdError(await verify(bizToken, Buffer.from('x')), 400, 'BAD_ARGUMENTS: biz_token');
  });

  test('when biz_token is missing, then it answers 400 MISSING_ARGUMENTS: biz_token', async () => {
    expectFaceIdError(await verify(undefined), 400, 'MISSING_ARGUMENTS: biz_token');
  });

  test('when the sign was made with a wrong secret, then it answers 403 AUTHENTICATION_ERROR and the token stays usable', async () => {
    const bizToken = await issueToken();
    const bytes = await packageFor(bizToken);
    const answer = await postForm(VERIFY_PATH, [
      ['sign', freshSign(SANDBOX_KEY, 'wrong')],
      ['sign_version', 'hmac_sha1'],
      ['biz_token', bizToken],
      ['meglive_data', bytes],
    ]);
    expectFaceIdError(answer, 403, 'AUTHENTICATION_ERROR');
    expect((await verify(bizToken, bytes)).status).toBe(200);
  });

  test('when the sign is missing, then it answers 400 MISSING_ARGUMENTS: sign', async () => {
    const answer = await postForm(VERIFY_PATH, [
      ['sign_version', 'hmac_sha1'],
      ['biz_token', 'x'],
    ]);
    expectFaceIdError(answer, 400, 'MISSING_ARGUMENTS: sign');
  });

  test.each(['meglive', 'still'])(
    'when meglive_data is missing for a %s token, then it answers 400 MISSING_ARGUMENTS: meglive_data',
    async (livenessType) => {
      const bizToken = await issueToken({ fields: { liveness_type: livenessType } });
      expectFaceIdError(await verify(bizToken), 400, 'MISSING_ARGUMENTS: meglive_data');
    },
  );

  test('when a raw_image token is verified without a package, then it answers 200 SUCCESS', async () => {
    const bizToken = await issueToken({
      fields: { liveness_type: 'raw_image' },
      files: { image_ref1: jpeg(32, 32), image: jpeg(40, 40) },
    });
    const answer = await verify(bizToken);
    expect(answer.status).toBe(200);
    expect(answer.json).toMatchObject({ result_code: 1000, result_message: 'SUCCESS' });
  });

  test('when a raw_image token is verified with a package, then the package decides', async () => {
    const bizToken = await issueToken({
      fields: { liveness_type: 'raw_image' },
      files: { image_ref1: jpeg(32, 32), image: jpeg(40, 40) },
    });
    const answer = await verify(bizToken, await packageFor(bizToken, 'PASS_LIVING_NOT_THE_SAME'));
    expect(answer.json?.result_code).toBe(2000);
  });

  test.each<[string, (bizToken: string, bytes: Buffer) => Part[], string]>([
    ['an unknown parameter', () => [['verbose', '1']], 'BAD_ARGUMENTS: verbose'],
    ['a repeated biz_token', (bizToken) => [['biz_token', bizToken]], 'BAD_ARGUMENTS: biz_token'],
    ['a second meglive_data', (_bizToken, bytes) => [['meglive_data', bytes]], 'BAD_ARGUMENTS: meglive_data'],
  ])('when the request has %s, then it answers 400 %s', async (_what, extra, error) => {
    const bizToken = await issueToken();
    const bytes = await packageFor(bizToken);
    expectFaceIdError(await verify(bizToken, bytes, extra(bizToken, bytes)), 400, error);
  });

  test('when meglive_data is sent as text or biz_token as a file, then it answers 400 BAD_ARGUMENTS for it', async () => {
    const bizToken = await issueToken();
    const asText = await postForm(VERIFY_PATH, [
      ...signParts(),
      ['biz_token', bizToken],
      ['meglive_data', 'not a file'],
    ]);
    expectFaceIdError(asText, 400, 'BAD_ARGUMENTS: meglive_data');
    const asFile = await postForm(VERIFY_PATH, [
      ...signParts(),
      ['biz_token', Buffer.from(bizToken)],
      ['meglive_data', await packageFor(bizToken)],
    ]);
    expectFaceIdError(asFile, 400, 'BAD_ARGUMENTS: biz_token');
  });

  test('when Content-Length announces more than 20 MB, then it answers 413 text/plain "Request Entity Too Large"', async () => {
    const port = Number(new URL(sandbox.url).port);
    const answer = await announceUpload(port, {}, 20 * 1024 * 1024 + 1, '--x\r\n', VERIFY_PATH);
    expect({ status: answer.status, contentType: answer.headers['content-type'], text: answer.text }).toEqual({
      status: 413,
      contentType: 'text/plain',
      text: 'Request Entity Too Large',
    });
  });
});

describe('the sandbox verify: scenarios and counts', () => {
  test('when the global scenario is INTERNAL_ERROR once, then verify answers 500 and the token is still verified next time', async () => {
    const bizToken = await issueToken();
    const bytes = await packageFor(bizToken);
    expect((await putScenario({ outcome: 'INTERNAL_ERROR', times: 1 })).status).toBe(200);
    expectFaceIdError(await verify(bizToken, bytes), 500, 'INTERNAL_ERROR');
    expect((await verify(bizToken, bytes)).status).toBe(200);
  });

  test('when the global scenario is CONCURRENCY_LIMIT_EXCEEDED_429, then verify answers 429', async () => {
    const bizToken = await issueToken();
    const bytes = await packageFor(bizToken);
    expect((await putScenario({ outcome: 'CONCURRENCY_LIMIT_EXCEEDED_429' })).status).toBe(200);
    expectFaceIdError(await verify(bizToken, bytes), 429, 'CONCURRENCY_LIMIT_EXCEEDED');
  });

  test('when a scenario is set, then a bad package is still refused first', async () => {
    const bizToken = await issueToken();
    expect((await putScenario({ outcome: 'INTERNAL_ERROR' })).status).toBe(200);
    expectFaceIdError(await verify(bizToken, Buffer.from('x')), 400, 'MEGLIVE_DATA_ERROR');
  });

  test('when verify requests arrive, then GET /sandbox/stats and verifyCount count them', async () => {
    const before = sandbox.verifyCount();
    await verify(undefined);
    await verify('unknown', Buffer.from('x'));
    expect(sandbox.verifyCount()).toBe(before + 2);
    expect(sandbox.receivedVerifications.at(-1)).toEqual({
      fields: { sign: [expect.any(String)], sign_version: ['hmac_sha1'], biz_token: ['unknown'] },
      files: { meglive_data: [1] },
    });
    const stats = (await (await fetch(`${sandbox.url}/sandbox/stats`)).json()) as Record<string, unknown>;
    expect(stats.verifications).toBe(sandbox.verifyCount());
    expect(stats.requests).toEqual(expect.any(Number));
  });
});

describe('POST /sandbox/meglive-data', () => {
  test('when it is sent as curl -F sends it, then it answers 200 application/octet-stream with a package', async () => {
    const bizToken = await issueToken();
    const answer = await megliveData({ biz_token: bizToken, outcome: 'SUCCESS' });
    expect(answer.status).toBe(200);
    expect(answer.contentType).toBe('application/octet-stream');
    expect(decodeMeglivePackage(answer.bytes, packageKey(SANDBOX_SECRET))).toEqual({
      bizToken,
      outcome: 'SUCCESS',
      confidence: undefined,
      attackScore: undefined,
      resultCode: undefined,
    });
  });

  test('when it is sent as curl -d sends it, then the package it answers is accepted by verify', async () => {
    const bizToken = await issueToken();
    const answer = await megliveData({ biz_token: bizToken, outcome: 'NO_ID_PHOTO', attack_score: '0.1' }, true);
    expect(answer.status).toBe(200);
    const verified = await verify(bizToken, answer.bytes);
    expect(verified.json).toMatchObject({ result_code: 3000, result_message: 'NO_ID_PHOTO' });
    expect(verified.json?.attack_result).toEqual({ score: 0.1, threshold: 0.5, result: false });
  });

  test('when the outcome is unknown, then it answers 400 naming it and listing the outcomes', async () => {
    const bizToken = await issueToken();
    const answer = await megliveData({ biz_token: bizToken, outcome: 'SUCESS' });
    expect(answer.status).toBe(400);
    expect(answer.json?.error).toMatch(/^BAD_ARGUMENTS: outcome/);
    expect(answer.json?.error).toContain('SUCESS');
    expect(answer.json?.allowed).toContain('PASS_LIVING_NOT_THE_SAME');
  });

  test.each([
    ['outcome is missing', { outcome: undefined }, 'MISSING_ARGUMENTS: outcome'],
    ['biz_token is missing', { biz_token: undefined }, 'MISSING_ARGUMENTS: biz_token'],
    ['biz_token was never issued', { biz_token: 'nope' }, 'BAD_ARGUMENTS: biz_token'],
    ['confidence is 100.5', { confidence: '100.5' }, 'BAD_ARGUMENTS: confidence'],
    ['confidence is not a number', { confidence: 'high' }, 'BAD_ARGUMENTS: confidence'],
    ['attack_score is 1.5', { attack_score: '1.5' }, 'BAD_ARGUMENTS: attack_score'],
    ['attack_score is negative', { attack_score: '-0.1' }, 'BAD_ARGUMENTS: attack_score'],
    ['result_code is 999', { result_code: '999' }, 'BAD_ARGUMENTS: result_code'],
    ['result_code is 10000', { result_code: '10000' }, 'BAD_ARGUMENTS: result_code'],
    ['result_code is fractional', { result_code: '3100.5' }, 'BAD_ARGUMENTS: result_code'],
    ['there is an unknown field', { liveness_type: 'meglive' }, 'BAD_ARGUMENTS: liveness_type'],
  ])('when %s, then it answers 400 %s', async (_what, change, error) => {
    const bizToken = await issueToken();
    const fields = Object.fromEntries(
      Object.entries({ biz_token: bizToken, outcome: 'SUCCESS', ...change }).filter(
        (entry): entry is [string, string] => entry[1] !== undefined,
      ),
    );
    const answer = await megliveData(fields);
    expect({ status: answer.status, error: answer.json?.error }).toEqual({ status: 400, error });
  });

  test('when the token was already verified, then it answers 400 BAD_ARGUMENTS: biz_token', async () => {
    const bizToken = await issueToken();
    expect((await verify(bizToken, await packageFor(bizToken))).status).toBe(200);
    const answer = await megliveData({ biz_token: bizToken, outcome: 'SUCCESS' });
    expect({ status: answer.status, error: answer.json?.error }).toEqual({
      status: 400,
      error: 'BAD_ARGUMENTS: biz_token',
    });
  });

  test('when a field is a file, then it answers 400 BAD_ARGUMENTS for it', async () => {
    const bizToken = await issueToken();
    const answer = await postForm('/sandbox/meglive-data', [
      ['biz_token', bizToken],
      ['outcome', Buffer.from('SUCCESS')],
    ]);
    expect(answer.json?.error).toBe('BAD_ARGUMENTS: outcome');
  });

  test('when the body is over 64 KiB, then it answers 413', async () => {
    const answer = await megliveData({ biz_token: 'x'.repeat(70 * 1024), outcome: 'SUCCESS' }, true);
    expect(answer.status).toBe(413);
  });
});

describe('the sandbox webhook sink', () => {
  const secret = `whsec_${randomBytes(24).toString('base64')}`;
  let signed: Sandbox;
  beforeAll(async () => {
    signed = await startTestSandbox(0, secret);
  });
  afterAll(() => signed.close());

  const event = { type: 'verification.completed', timestamp: '2026-12-01T10:00:00.000Z', data: { verdict: 'passed' } };

  /** A delivery as the service sends one, signed with `key` (the sandbox's own secret unless told). */
  async function deliver(target: Sandbox, body: string, key = secret, id = 'msg_1'): Promise<Response> {
    const now = new Date();
    return fetch(`${target.url}/sandbox/webhooks`, {
      method: 'POST',
      headers: {
        'Content-Type': 'application/json',
        'webhook-id': id,
        'webhook-timestamp': String(Math.floor(now.getTime() / 1000)),
        'webhook-signature': new Webhook(key).sign(id, now, body),
      },
      body,
    });
  }

  const list = async (target: Sandbox): Promise<Array<Record<string, unknown>>> => {
    const response = await fetch(`${target.url}/sandbox/webhooks`);
    expect(response.status).toBe(200);
    return ((await response.json()) as { deliveries: Array<Record<string, unknown>> }).deliveries;
  };

  test('when a delivery arrives, then it answers 204 and GET lists it with its headers and parsed body', async () => {
    const response = await deliver(sandbox, JSON.stringify(event));
    expect(response.status).toBe(204);
    const deliveries = await list(sandbox);
    expect(deliveries).toEqual([
      {
        webhook_id: 'msg_1',
        webhook_timestamp: expect.stringMatching(/^\d{10}$/),
        webhook_signature: expect.stringMatching(/^v1,/),
        body: event,
        received_at: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
        status: 204,
        accepted: true,
      },
    ]);
    // No secret given to this sandbox: no verdict on the signature.
    expect(deliveries[0]).not.toHaveProperty('signature_valid');
    expect(sandbox.webhooks()).toEqual(deliveries);
  });

  test('when DELETE /sandbox/webhooks is sent, then the list is empty', async () => {
    await deliver(sandbox, JSON.stringify(event));
    expect((await fetch(`${sandbox.url}/sandbox/webhooks`, { method: 'DELETE' })).status).toBe(200);
    expect(await list(sandbox)).toEqual([]);
  });

  test('when the sandbox has the secret and the signature is right, then signature_valid is true', async () => {
    await deliver(signed, JSON.stringify(event));
    expect(signed.webhooks().at(-1)).toMatchObject({ body: event, signature_valid: true, accepted: true });
  });

  test('when the signature was made with another secret, then signature_valid is false', async () => {
    await deliver(signed, JSON.stringify(event), `whsec_${randomBytes(24).toString('base64')}`, 'msg_wrong');
    expect(signed.webhooks().at(-1)).toMatchObject({ webhook_id: 'msg_wrong', signature_valid: false });
  });

  test('when the body was changed after signing, then signature_valid is false', async () => {
    const now = new Date();
    const signature = new Webhook(secret).sign('msg_2', now, JSON.stringify(event));
    await fetch(`${signed.url}/sandbox/webhooks`, {
      method: 'POST',
      headers: {
        'webhook-id': 'msg_2',
        'webhook-timestamp': String(Math.floor(now.getTime() / 1000)),
        'webhook-signature': signature,
      },
      body: JSON.stringify({ ...event, type: 'tampered' }),
    });
    expect(signed.webhooks().at(-1)).toMatchObject({ webhook_id: 'msg_2', signature_valid: false });
  });

  test('when a signed body is not JSON, then it is kept as text and signature_valid is still true', async () => {
    await deliver(signed, 'plain text', secret, 'msg_text');
    expect(signed.webhooks().at(-1)).toMatchObject({ body: null, body_text: 'plain text', signature_valid: true });
  });

  test('when the signature headers are missing, then the delivery is listed with nulls and signature_valid false', async () => {
    await fetch(`${signed.url}/sandbox/webhooks`, { method: 'POST', body: 'not json' });
    expect(signed.webhooks().at(-1)).toMatchObject({
      webhook_id: null,
      webhook_signature: null,
      body: null,
      body_text: 'not json',
      signature_valid: false,
    });
  });

  test('when the status is set to 503 twice, then the next two deliveries get 503, are listed as not accepted, and the third 204', async () => {
    const put = await fetch(`${sandbox.url}/sandbox/webhooks/status`, {
      method: 'PUT',
      body: JSON.stringify({ status: 503, times: 2 }),
    });
    expect(put.status).toBe(200);
    const statuses: number[] = [];
    for (const id of ['a', 'b', 'c']) statuses.push((await deliver(sandbox, JSON.stringify(event), secret, id)).status);
    expect(statuses).toEqual([503, 503, 204]);
    expect(sandbox.webhooks().map(({ status, accepted }) => ({ status, accepted }))).toEqual([
      { status: 503, accepted: false },
      { status: 503, accepted: false },
      { status: 204, accepted: true },
    ]);
  });

  test('when an open-ended status is reset with 204, then deliveries are accepted again', async () => {
    const putStatus = (body: unknown) =>
      fetch(`${sandbox.url}/sandbox/webhooks/status`, { method: 'PUT', body: JSON.stringify(body) });
    expect((await putStatus({ status: 500 })).status).toBe(200);
    expect((await deliver(sandbox, '{}')).status).toBe(500);
    expect((await deliver(sandbox, '{}')).status).toBe(500);
    expect((await putStatus({ status: 204 })).status).toBe(200);
    expect((await deliver(sandbox, '{}')).status).toBe(204);
  });

  test.each([[{ status: 99 }], [{ status: 700 }], [{ status: 503, times: 0 }], [{ status: '503' }], ['nope']])(
    'when PUT /sandbox/webhooks/status gets %j, then it answers 400',
    async (body) => {
      const response = await fetch(`${sandbox.url}/sandbox/webhooks/status`, {
        method: 'PUT',
        body: JSON.stringify(body),
      });
      expect(response.status).toBe(400);
    },
  );

  test('when 101 deliveries arrive, then the last 100 are kept, oldest first', async () => {
    for (let index = 0; index < 101; index += 1) await deliver(sandbox, JSON.stringify({ index }), secret, `m${index}`);
    const deliveries = sandbox.webhooks();
    expect(deliveries).toHaveLength(100);
    expect(deliveries[0]?.webhook_id).toBe('m1');
    expect(deliveries.at(-1)?.webhook_id).toBe('m100');
  });

  test('when a delivery is over 1 MiB, then it answers 413', async () => {
    const response = await deliver(sandbox, JSON.stringify({ pad: 'x'.repeat(1024 * 1024) }));
    expect(response.status).toBe(413);
  });
});

describe('the issued-token memory', () => {
  const token: NewIssuedToken = {
    livenessType: 'meglive',
    comparisonType: '0',
    bizNo: '',
    verbose: false,
    imageRef1: true,
    imageRef2: false,
  };

  test('when an hour has passed, then a token is no longer found', () => {
    let now = 1_000_000;
    const tokens = new IssuedTokens(10, () => now);
    tokens.remember('a', token);
    now += BIZ_TOKEN_LIFETIME_MS - 1;
    expect(tokens.find('a')).toBeDefined();
    now += 1;
    expect(tokens.find('a')).toBeUndefined();
  });

  test('when more tokens than the bound are issued, then the oldest are dropped', () => {
    const tokens = new IssuedTokens(2, () => 0);
    for (const name of ['a', 'b', 'c']) tokens.remember(name, token);
    expect(tokens.size).toBe(2);
    expect(tokens.find('a')).toBeUndefined();
    expect(tokens.find('c')).toMatchObject({ verified: false, livenessType: 'meglive' });
  });
});
