import http from 'node:http';
import FormData from 'form-data';
import { freshSign, sign } from '../src/faceid/sign';
import type { Sandbox } from '../src/sandbox/sandbox-server';
import { jpeg, truncated } from './fixtures/images';
import { SANDBOX_KEY, SANDBOX_SECRET, startTestSandbox } from './helpers/test-service';

/**
 * The FaceID sandbox on its own, spoken to as FaceID is: multipart bodies built with `form-data`,
 * signed as the seed describes, answers checked in FaceID's formats.
 * @see ../shared/seed/App-GetBizToken.md, ../shared/seed/App-Authentication.md
 */
const PATH = '/faceid/v3/sdk/get_biz_token';
const FACEID_REQUEST_ID = /^\d{10},[0-9a-f-]{36}$/;

let sandbox: Sandbox;
beforeAll(async () => {
  sandbox = await startTestSandbox();
});
afterAll(() => sandbox.close());
afterEach(async () => {
  // No test leaves a global scenario behind for the next one.
  await fetch(`${sandbox.url}/sandbox/scenario`, { method: 'DELETE' });
});

interface Parts {
  fields?: Record<string, string | undefined>;
  files?: Record<string, Buffer>;
}

/** A comparison_type 0 / meglive request the sandbox accepts; `undefined` drops a field. */
function validParts(overrides: Parts = {}): Parts {
  return {
    fields: {
      sign: freshSign(SANDBOX_KEY, SANDBOX_SECRET),
      sign_version: 'hmac_sha1',
      comparison_type: '0',
      liveness_type: 'meglive',
      uuid: 'sandbox-test-user',
      ...overrides.fields,
    },
    files: { image_ref1: jpeg(64, 64), ...overrides.files },
  };
}

interface FaceIdAnswer {
  status: number;
  contentType: string;
  text: string;
  json: Record<string, unknown> | undefined;
}

async function post(parts: Parts = validParts()): Promise<FaceIdAnswer> {
  const form = new FormData();
  for (const [name, value] of Object.entries(parts.fields ?? {})) if (value !== undefined) form.append(name, value);
  for (const [name, bytes] of Object.entries(parts.files ?? {}))
    form.append(name, bytes, { filename: `${name}.jpg`, contentType: 'image/jpeg' });
  const body = form.getBuffer();
  const response = await fetch(`${sandbox.url}${PATH}`, { method: 'POST', headers: form.getHeaders(), body });
  const text = await response.text();
  let json: Record<string, unknown> | undefined;
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch {
    json = undefined;
  }
  return { status: response.status, contentType: response.headers.get('content-type') ?? '', text, json };
}

/** FaceID's error answer: `{error, request_id, time_used}` as JSON. */
function expectFaceIdError(answer: FaceIdAnswer, status: number, error: string | RegExp): void {
  expect(answer.status).toBe(status);
  expect(answer.contentType).toMatch(/^application\/json/);
  if (typeof error === 'string') expect(answer.json?.error).toBe(error);
  else expect(answer.json?.error).toMatch(error);
  expect(answer.json?.request_id).toMatch(FACEID_REQUEST_ID);
  expect(answer.json?.biz_token).toBeUndefined();
}

const putScenario = (body: string): Promise<Response> =>
  fetch(`${sandbox.url}/sandbox/scenario`, { method: 'PUT', headers: { 'Content-Type': 'application/json' }, body });

describe('the sandbox get_biz_token', () => {
  test('when a valid signed request arrives, then it answers 200 JSON with biz_token, request_id and time_used', async () => {
    const before = sandbox.received.length;
    const answer = await post();
    expect(answer.status).toBe(200);
    expect(answer.contentType).toMatch(/^application\/json/);
    expect(answer.json?.biz_token).toMatch(/^\d{10},[0-9a-f-]{36}$/);
    expect(answer.json?.request_id).toMatch(FACEID_REQUEST_ID);
    expect(typeof answer.json?.time_used).toBe('number');
    expect(answer.json?.error).toBeUndefined();
    expect(sandbox.received.length).toBe(before + 1);
    expect(sandbox.received.at(-1)?.fields.comparison_type).toEqual(['0']);
    expect(sandbox.received.at(-1)?.files.image_ref1).toEqual([jpeg(64, 64).length]);
  });

  test('when the sign is missing, then it answers 400 MISSING_ARGUMENTS: sign', async () => {
    expectFaceIdError(await post(validParts({ fields: { sign: undefined } })), 400, 'MISSING_ARGUMENTS: sign');
  });

  test('when sign_version is not hmac_sha1, then it answers 400 BAD_ARGUMENTS: sign_version', async () => {
    expectFaceIdError(
      await post(validParts({ fields: { sign_version: 'hmac_sha256' } })),
      400,
      'BAD_ARGUMENTS: sign_version',
    );
  });

  test('when the sign was made with a wrong secret, then it answers 403 AUTHENTICATION_ERROR', async () => {
    expectFaceIdError(
      await post(validParts({ fields: { sign: freshSign(SANDBOX_KEY, 'wrong') } })),
      403,
      'AUTHENTICATION_ERROR',
    );
  });

  test('when the sign was made for another api_key, then it answers 403 AUTHENTICATION_ERROR', async () => {
    expectFaceIdError(
      await post(validParts({ fields: { sign: freshSign('another-key', SANDBOX_SECRET) } })),
      403,
      'AUTHENTICATION_ERROR',
    );
  });

  test('when the sign is not a sign at all, then it answers 403 AUTHENTICATION_ERROR', async () => {
    expectFaceIdError(await post(validParts({ fields: { sign: 'garbage!' } })), 403, 'AUTHENTICATION_ERROR');
  });

  test('when the sign expired (expire_time in the past), then it answers 403 AUTHORIZATION_ERROR: EXPIRED_SIGN', async () => {
    const now = Math.floor(Date.now() / 1000);
    const expired = sign({
      apiKey: SANDBOX_KEY,
      apiSecret: SANDBOX_SECRET,
      currentTime: now - 120,
      expireTime: now - 60,
      random: '12345',
    });
    expectFaceIdError(await post(validParts({ fields: { sign: expired } })), 403, 'AUTHORIZATION_ERROR: EXPIRED_SIGN');
  });

  test('when a single-use sign (expire_time 0) is used twice, then the first is accepted and the second refused with 403', async () => {
    const now = Math.floor(Date.now() / 1000);
    const once = sign({
      apiKey: SANDBOX_KEY,
      apiSecret: SANDBOX_SECRET,
      currentTime: now,
      expireTime: 0,
      random: '987654321',
    });
    const first = await post(validParts({ fields: { sign: once } }));
    expect(first.status).toBe(200);
    expect(first.json?.biz_token).toMatch(/^\d{10},[0-9a-f-]{36}$/);
    const second = await post(validParts({ fields: { sign: once } }));
    expectFaceIdError(second, 403, /^(AUTHENTICATION_ERROR|AUTHORIZATION_ERROR: ?INVALID_SIGN)$/);
  });

  test('when a reusable sign is used twice within its validity, then both are accepted', async () => {
    const reusable = freshSign(SANDBOX_KEY, SANDBOX_SECRET);
    expect((await post(validParts({ fields: { sign: reusable } }))).status).toBe(200);
    expect((await post(validParts({ fields: { sign: reusable } }))).status).toBe(200);
  });

  test('when liveness_timeout is 61, then it answers 400 BAD_ARGUMENTS: liveness_timeout', async () => {
    expectFaceIdError(
      await post(validParts({ fields: { liveness_timeout: '61' } })),
      400,
      'BAD_ARGUMENTS: liveness_timeout',
    );
  });

  test('when liveness_timeout is 60, then it is accepted', async () => {
    expect((await post(validParts({ fields: { liveness_timeout: '60' } }))).status).toBe(200);
  });

  test('when image_ref1 is a truncated JPEG, then it answers 400 IMAGE_ERROR_UNSUPPORTED_FORMAT:image_ref1', async () => {
    expectFaceIdError(
      await post(validParts({ files: { image_ref1: truncated(jpeg(64, 64), 0.6) } })),
      400,
      'IMAGE_ERROR_UNSUPPORTED_FORMAT:image_ref1',
    );
  });

  test('when image_ref1 is 5000 px wide, then it answers 400 with an error starting with INVALID_IMAGE_SIZE', async () => {
    const answer = await post(validParts({ files: { image_ref1: jpeg(5000, 8) } }));
    expectFaceIdError(answer, 400, /^INVALID_IMAGE_SIZE/);
    expect(answer.json?.error).toContain('image_ref1');
  });

  test('when Content-Length announces more than 20 MB, then it answers 413 text/plain "Request Entity Too Large"', async () => {
    const before = sandbox.received.length;
    const { status, contentType, text } = await new Promise<{ status: number; contentType: string; text: string }>(
      (resolve, reject) => {
        const url = new URL(`${sandbox.url}${PATH}`);
        const req = http.request(
          {
            host: url.hostname,
            port: url.port,
            path: url.pathname,
            method: 'POST',
            headers: {
              'Content-Type': 'multipart/form-data; boundary=xyz',
              'Content-Length': String(20 * 1024 * 1024 + 1),
            },
          },
          (res) => {
            const chunks: Buffer[] = [];
            res.on('data', (chunk: Buffer) => chunks.push(chunk));
            res.on('end', () => {
              resolve({
                status: res.statusCode ?? 0,
                contentType: String(res.headers['content-type'] ?? ''),
                text: Buffer.concat(chunks).toString('utf8'),
              });
              req.destroy();
            });
            res.on('error', reject);
          },
        );
        req.on('error', reject);
        // Only the start of the announced body: the sandbox must answer from the header alone.
        req.write('--xyz\r\n');
      },
    );
    expect(status).toBe(413);
    expect(contentType).toMatch(/^text\/plain/);
    expect(text).toBe('Request Entity Too Large');
    expect(sandbox.received.length).toBe(before);
  });

  test('when the path is not an API, then it answers 404 API_NOT_FOUND', async () => {
    const response = await fetch(`${sandbox.url}/faceid/v3/sdk/nope`, { method: 'POST' });
    expect(response.status).toBe(404);
    expect(((await response.json()) as Record<string, unknown>).error).toBe('API_NOT_FOUND');
  });
});

describe('the sandbox control endpoint', () => {
  test('when PUT /sandbox/scenario asks for INTERNAL_ERROR twice, then the next 2 requests get 500 INTERNAL_ERROR and the third succeeds', async () => {
    const put = await putScenario(JSON.stringify({ outcome: 'INTERNAL_ERROR', times: 2 }));
    expect(put.status).toBe(200);
    expectFaceIdError(await post(), 500, 'INTERNAL_ERROR');
    expectFaceIdError(await post(), 500, 'INTERNAL_ERROR');
    const third = await post();
    expect(third.status).toBe(200);
    expect(third.json?.biz_token).toMatch(/^\d{10},[0-9a-f-]{36}$/);
  });

  test('when DELETE /sandbox/scenario follows an open-ended scenario, then requests succeed again', async () => {
    expect((await putScenario(JSON.stringify({ outcome: 'CONCURRENCY_LIMIT_EXCEEDED' }))).status).toBe(200);
    expectFaceIdError(await post(), 403, 'CONCURRENCY_LIMIT_EXCEEDED');
    expectFaceIdError(await post(), 403, 'CONCURRENCY_LIMIT_EXCEEDED');
    const deleted = await fetch(`${sandbox.url}/sandbox/scenario`, { method: 'DELETE' });
    expect(deleted.status).toBe(200);
    expect((await post()).status).toBe(200);
  });

  test('when a scenario is set, then a wrong sign is still refused first (the sign is checked before any outcome)', async () => {
    expect((await putScenario(JSON.stringify({ outcome: 'INTERNAL_ERROR', times: 1 }))).status).toBe(200);
    expectFaceIdError(
      await post(validParts({ fields: { sign: freshSign(SANDBOX_KEY, 'wrong') } })),
      403,
      'AUTHENTICATION_ERROR',
    );
  });

  test('when GET /sandbox/stats is asked, then it reports the connections and the requests received', async () => {
    await post();
    const response = await fetch(`${sandbox.url}/sandbox/stats`);
    expect(response.status).toBe(200);
    const stats = (await response.json()) as { connections: unknown; requests: unknown };
    expect(stats.requests).toBe(sandbox.received.length);
    expect(stats.connections).toBe(sandbox.connectionCount());
    expect(stats.connections).toEqual(expect.any(Number));
    expect(stats.connections as number).toBeGreaterThanOrEqual(1);
  });

  test.each([
    ['an unknown outcome', JSON.stringify({ outcome: 'NOPE' })],
    ['a negative times', JSON.stringify({ outcome: 'INTERNAL_ERROR', times: -1 })],
    ['a fractional latency', JSON.stringify({ latencyMs: 1.5 })],
    ['text that is not JSON', 'not json'],
    ['JSON null', 'null'],
  ])(
    'when PUT /sandbox/scenario gets %s, then it answers 400 and the sandbox keeps answering normally',
    async (_what, body) => {
      const response = await putScenario(body);
      expect(response.status).toBe(400);
      expect((await post()).status).toBe(200);
    },
  );
});
