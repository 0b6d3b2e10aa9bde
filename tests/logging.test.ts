import { createHmac, randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type supertest from 'supertest';
import { createLogger } from '../src/logging/logger';
import type { Sandbox } from '../src/sandbox/sandbox-server';
import { jpeg, textNamedJpg } from './fixtures/images';
import { announceUpload } from './helpers/raw-request';
import {
  captureLog,
  postToken,
  SANDBOX_SECRET,
  signToken,
  startTestSandbox,
  startTestService,
  TEST_JWT_SECRET,
  type TestService,
  type TokenForm,
  validForm,
  validIdcardForm,
} from './helpers/test-service';

/**
 * Contract section 5: one JSON line per request with request id, pseudonymous user,
 * route, status, outcome code, latency and the upstream facts; and never, at any level (here: trace), the
 * api_secret, a sign, a JWT, an ID number, a name or image bytes. A full set of requests runs once in
 * beforeAll against services logging at trace; the tests then read what was written.
 */

const RAW_SUB = `raw-sub-${randomUUID()}`;
const OTHER_JWT_SECRET = 'another-issuers-secret-that-is-long-enough-42';
const WRONG_FACEID_SECRET = `wrong-faceid-secret-${randomUUID()}`;
const ID_NUMBER = '11010519491231002X';
const ID_NUMBER_BAD_CHECK_DIGIT = '110105194912310021';
const NAME = '张三';

/** The photo every upstream-bound request carries (pattern bytes, so any slice of it is distinctive). */
const PHOTO = jpeg(64, 64);
const NOT_A_PHOTO = textNamedJpg();

interface Sent {
  label: string;
  target: TestService;
  status: number;
  requestId: string;
  /** The problem code, or OK for a 2xx. */
  code: string;
  /** Whether the caller was authenticated (the line then names the pseudonymous user). */
  authenticated: boolean;
  /** True when the request reached FaceID and FaceID answered (so its request_id is known). */
  faceidAnswered: boolean;
  /** True when an upstream exchange was attempted. */
  upstream: boolean;
  expectedAttempts?: number;
  replay?: boolean;
  headers: Record<string, string | string[] | undefined>;
  body: Record<string, unknown>;
}

let sandbox: Sandbox;
let main: TestService;
let wrongSecret: TestService;
let rawServer: http.Server;
const sent: Sent[] = [];
const jwtsSent: string[] = [];

async function bearerFor(sub = RAW_SUB, secret = TEST_JWT_SECRET): Promise<string> {
  const jwt = await signToken({ sub }, secret);
  jwtsSent.push(jwt);
  return `Bearer ${jwt}`;
}

const withBizNo = (bizNo: string, form: Required<TokenForm> = photoForm()): Required<TokenForm> => ({
  fields: { ...form.fields, biz_no: bizNo },
  files: form.files,
});
const photoForm = (): Required<TokenForm> => ({
  fields: validForm().fields,
  files: { image_ref1: Buffer.from(PHOTO) },
});

interface Expectation {
  status: number;
  code: string;
  authenticated?: boolean;
  faceidAnswered?: boolean;
  upstream?: boolean;
  expectedAttempts?: number;
  replay?: boolean;
}

function record(label: string, target: TestService, response: supertest.Response, expected: Expectation): Sent {
  // Each request must have been answered as intended, or the log checks would prove nothing.
  expect({ label, status: response.status, code: (response.body as { code?: unknown }).code ?? 'OK' }).toEqual({
    label,
    status: expected.status,
    code: expected.code,
  });
  const entry: Sent = {
    label,
    target,
    status: response.status,
    requestId: String(response.headers['x-request-id']),
    code: expected.code,
    authenticated: expected.authenticated ?? true,
    faceidAnswered: expected.faceidAnswered ?? false,
    upstream: expected.upstream ?? expected.faceidAnswered ?? false,
    expectedAttempts: expected.expectedAttempts,
    replay: expected.replay,
    headers: response.headers as Record<string, string>,
    body: response.body as Record<string, unknown>,
  };
  sent.push(entry);
  return entry;
}

async function send(
  label: string,
  target: TestService,
  form: TokenForm,
  expected: Expectation,
  headers: Record<string, string> = {},
): Promise<Sent> {
  const response = await postToken(target, form, { Authorization: await bearerFor(), ...headers });
  return record(label, target, response, expected);
}

/** A POST whose Content-Length announces more than 20 MB: refused before the body is read. */
async function postOversized(
  authorization: string,
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Record<string, unknown> }> {
  // Part of the body goes out too (an ID number, photo bytes): refused or not, none of it may reach the log.
  const prefix = Buffer.concat([
    Buffer.from(`--xyz\r\nContent-Disposition: form-data; name="idcard_number"\r\n\r\n${ID_NUMBER}\r\n--xyz\r\n`),
    Buffer.from(
      `Content-Disposition: form-data; name="image_ref1"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n`,
    ),
    PHOTO,
  ]);
  const answer = await announceUpload(
    (rawServer.address() as AddressInfo).port,
    { Authorization: authorization, 'Content-Type': 'multipart/form-data; boundary=xyz' },
    30 * 1024 * 1024,
    prefix,
  );
  return { status: answer.status, headers: answer.headers, body: JSON.parse(answer.text) as Record<string, unknown> };
}

beforeAll(async () => {
  sandbox = await startTestSandbox();
  main = await startTestService({ LOG_LEVEL: 'trace', FACEID_TIMEOUT_MS: '1000', FACEID_MAX_RETRIES: '2' }, sandbox);
  wrongSecret = await startTestService({ LOG_LEVEL: 'trace', FACEID_API_SECRET: WRONG_FACEID_SECRET }, sandbox);
  rawServer = http.createServer(main.service.app);
  await new Promise<void>((resolve) => rawServer.listen(0, '127.0.0.1', resolve));

  // Success, both comparison types (the ID number's x in both cases).
  await send('success comparison 0', main, photoForm(), {
    status: 201,
    code: 'OK',
    faceidAnswered: true,
    expectedAttempts: 1,
  });
  await send('success comparison 1', main, validIdcardForm(), {
    status: 201,
    code: 'OK',
    faceidAnswered: true,
    expectedAttempts: 1,
  });
  const lowerX = validIdcardForm();
  lowerX.fields.idcard_number = ID_NUMBER.toLowerCase();
  await send('success comparison 1, lower-case x', main, lowerX, {
    status: 201,
    code: 'OK',
    faceidAnswered: true,
    expectedAttempts: 1,
  });

  // Every local refusal.
  await send(
    'missing idcard_number',
    main,
    { fields: { comparison_type: '1', liveness_type: 'still', idcard_name: NAME } },
    { status: 400, code: 'MISSING_ARGUMENTS' },
  );
  await send(
    'missing image_ref1',
    main,
    { fields: { comparison_type: '0', liveness_type: 'meglive' } },
    { status: 400, code: 'MISSING_ARGUMENTS' },
  );
  await send(
    'bad check digit',
    main,
    { fields: { ...validIdcardForm().fields, idcard_number: ID_NUMBER_BAD_CHECK_DIGIT } },
    { status: 400, code: 'BAD_ARGUMENTS' },
  );
  await send(
    'bad liveness_timeout',
    main,
    { fields: { ...validIdcardForm().fields, liveness_timeout: '99' } },
    { status: 400, code: 'BAD_ARGUMENTS' },
  );
  await send(
    'image not a photo',
    main,
    { fields: validForm().fields, files: { image_ref1: Buffer.from(NOT_A_PHOTO) } },
    { status: 400, code: 'IMAGE_ERROR_UNSUPPORTED_FORMAT' },
  );
  await send(
    'image too wide',
    main,
    { fields: validForm().fields, files: { image_ref1: jpeg(4097, 8) } },
    { status: 400, code: 'INVALID_IMAGE_SIZE' },
  );
  await send(
    'JWT of another issuer',
    main,
    validIdcardForm(),
    { status: 401, code: 'UNAUTHENTICATED', authenticated: false },
    {
      Authorization: await bearerFor(RAW_SUB, OTHER_JWT_SECRET),
    },
  );
  const json = await main
    .http()
    .post('/v1/biz-tokens')
    .set('Authorization', await bearerFor())
    .send({ idcard_name: NAME, idcard_number: ID_NUMBER, image_ref1: PHOTO.toString('base64') });
  record('JSON body', main, json, { status: 415, code: 'UNSUPPORTED_MEDIA_TYPE' });
  const oversized = await postOversized(await bearerFor());
  sent.push({
    label: 'over 20 MB',
    target: main,
    status: oversized.status,
    requestId: String(oversized.headers['x-request-id']),
    code: 'PAYLOAD_TOO_LARGE',
    authenticated: true,
    faceidAnswered: false,
    upstream: false,
    headers: oversized.headers,
    body: oversized.body,
  });
  expect({ status: oversized.status, code: oversized.body.code }).toEqual({ status: 413, code: 'PAYLOAD_TOO_LARGE' });

  // Upstream failures.
  await send('FaceID: no face', main, withBizNo('sandbox:NO_FACE_FOUND', validIdcardForm()), {
    status: 400,
    code: 'NO_FACE_FOUND',
    faceidAnswered: true,
    expectedAttempts: 1,
  });
  await send('FaceID: INTERNAL_ERROR, retried', main, withBizNo('sandbox:INTERNAL_ERROR'), {
    status: 502,
    code: 'UPSTREAM_ERROR',
    faceidAnswered: true,
    expectedAttempts: 3,
  });
  await send('FaceID: hangs', main, withBizNo('sandbox:HANG'), {
    status: 504,
    code: 'UPSTREAM_TIMEOUT',
    upstream: true,
  });
  await send('FaceID: drops', main, withBizNo('sandbox:DROP'), {
    status: 502,
    code: 'UPSTREAM_ERROR',
    upstream: true,
    expectedAttempts: 3,
  });
  await send('FaceID: wrong api_secret', wrongSecret, validIdcardForm(), {
    status: 502,
    code: 'UPSTREAM_REJECTED',
    faceidAnswered: true,
    expectedAttempts: 1,
  });

  // An idempotent replay.
  const key = `idem-${randomUUID()}`;
  await send(
    'idempotent first',
    main,
    validIdcardForm(),
    { status: 201, code: 'OK', faceidAnswered: true, expectedAttempts: 1 },
    { 'Idempotency-Key': key },
  );
  const receivedBefore = sandbox.received.length;
  const replayed = await send(
    'idempotent replay',
    main,
    validIdcardForm(),
    { status: 201, code: 'OK', replay: true },
    { 'Idempotency-Key': key },
  );
  expect(replayed.headers['idempotent-replayed']).toBe('true');
  expect(sandbox.received.length).toBe(receivedBefore);
}, 30_000);

afterAll(async () => {
  await new Promise<void>((resolve) => (rawServer === undefined ? resolve() : rawServer.close(() => resolve())));
  await main?.close();
  await wrongSecret?.close();
  await sandbox?.close();
});

const targets = (): Array<[string, TestService]> => [
  ['main', main],
  ['wrong-secret', wrongSecret],
];

/** The pseudonymous user id of a JWT sub, as CONTRACT section 3 / authenticate-caller derive it. */
const pseudonymOf = (target: TestService, sub: string): string =>
  createHmac('sha256', target.config.auth.uuidSalt).update(`sub:${sub}`).digest('hex');

const requestLines = (target: TestService): Array<Record<string, unknown>> =>
  target.log.lines().filter((line) => 'latency_ms' in line);

/** Every way the secret or personal data could show up in a log line. */
function forbiddenStrings(): Array<[string, string]> {
  const slice = PHOTO.subarray(Math.floor(PHOTO.length / 2) - 8, Math.floor(PHOTO.length / 2) + 8);
  const photoBase64 = PHOTO.toString('base64');
  const middle = Math.floor(photoBase64.length / 2);
  const list: Array<[string, string]> = [
    ['FaceID api_secret', SANDBOX_SECRET],
    ['wrong FaceID api_secret', WRONG_FACEID_SECRET],
    ['JWT secret', TEST_JWT_SECRET],
    ['other JWT secret', OTHER_JWT_SECRET],
    ['ID number', ID_NUMBER],
    ['ID number, lower-case x', ID_NUMBER.toLowerCase()],
    ['ID number digits', ID_NUMBER.slice(0, 17)],
    ['ID number with bad check digit', ID_NUMBER_BAD_CHECK_DIGIT],
    ['name', NAME],
    ['name, JSON', JSON.stringify(NAME).slice(1, -1)],
    ['name, \\u escapes', '\\u5f20\\u4e09'],
    ['name, \\U escapes', '\\u5F20\\u4E09'],
    ['name, UTF-8 as latin1', Buffer.from(NAME, 'utf8').toString('latin1')],
    ['name, hex', Buffer.from(NAME, 'utf8').toString('hex')],
    ['name, base64', Buffer.from(NAME, 'utf8').toString('base64')],
    ['raw JWT sub', RAW_SUB],
    ['image slice, hex', slice.toString('hex')],
    ['image slice, latin1', slice.toString('latin1')],
    ['image slice, latin1 in JSON', JSON.stringify(slice.toString('latin1')).slice(1, -1)],
    ['image slice, base64', slice.toString('base64')],
    ['image, base64 of the middle', photoBase64.slice(middle - 16, middle + 16)],
    ['image slice, Buffer JSON', [...slice].join(',')],
    ['text posing as an image', NOT_A_PHOTO.toString('utf8').slice(0, 30)],
  ];
  for (const jwt of jwtsSent) {
    const [, payload, signature] = jwt.split('.');
    list.push(['JWT', jwt], ['JWT payload', payload ?? jwt], ['JWT signature', signature ?? jwt]);
  }
  for (const received of sandbox.received) for (const sign of received.fields.sign ?? []) list.push(['sign', sign]);
  return list;
}

describe('log lines at LOG_LEVEL=trace after a full set of requests', () => {
  test('when everything was logged, then every line is one valid JSON object with a level, time and msg', () => {
    for (const [name, target] of targets()) {
      const text = target.log.text();
      expect(text.length).toBeGreaterThan(0);
      expect(text.endsWith('\n')).toBe(true);
      const problems: string[] = [];
      for (const line of text.split('\n').filter((part) => part.length > 0)) {
        try {
          const parsed = JSON.parse(line) as unknown;
          if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed))
            problems.push(`${name}: not an object: ${line.slice(0, 120)}`);
          const object = parsed as Record<string, unknown>;
          if (typeof object.level !== 'number' || typeof object.time !== 'string' || typeof object.msg !== 'string')
            problems.push(`${name}: ${line.slice(0, 120)}`);
        } catch {
          problems.push(`${name}: not JSON: ${line.slice(0, 120)}`);
        }
      }
      expect(problems).toEqual([]);
    }
  });

  test('when everything was logged, then no line holds the api_secret, a sign, a JWT, an ID number, the name, the raw sub or image bytes', () => {
    expect(sandbox.received.length).toBeGreaterThanOrEqual(10);
    expect(jwtsSent.length).toBeGreaterThanOrEqual(15);
    const forbidden = forbiddenStrings();
    const found: string[] = [];
    for (const [name, target] of targets()) {
      const text = target.log.text();
      for (const [what, value] of forbidden) if (text.includes(value)) found.push(`${name} log holds the ${what}`);
    }
    expect(found).toEqual([]);
  });

  test('when a request was answered, then exactly one request line carries its X-Request-Id, user, route, code and status', () => {
    const problems: string[] = [];
    for (const request of sent) {
      const lines = requestLines(request.target).filter((line) => line.request_id === request.requestId);
      if (lines.length !== 1) {
        problems.push(`${request.label}: ${lines.length} request lines`);
        continue;
      }
      const line = lines[0]!;
      const expected = {
        request_id: request.requestId,
        route: '/v1/biz-tokens',
        code: request.code,
        res: { statusCode: request.status },
        ...(request.authenticated ? { user: pseudonymOf(request.target, RAW_SUB) } : {}),
      };
      try {
        expect(line).toMatchObject(expected);
        expect(typeof line.latency_ms).toBe('number');
        if (request.authenticated) expect(line.user).toMatch(/^[0-9a-f]{64}$/);
        else expect(line.user).toBeUndefined();
        if (request.replay === true) expect(line.idempotent_replay).toBe(true);
      } catch (error) {
        problems.push(`${request.label}: ${(error as Error).message.split('\n').slice(0, 12).join(' ')}`);
      }
    }
    expect(problems).toEqual([]);
  });

  test('when requests were answered, then each service wrote as many request lines as it answered requests, each with a distinct id', () => {
    for (const [name, target] of targets()) {
      const lines = requestLines(target);
      const mine = sent.filter((request) => request.target === target);
      expect({ name, lines: lines.length }).toEqual({ name, lines: mine.length });
      expect(new Set(lines.map((line) => line.request_id)).size).toBe(lines.length);
    }
  });

  test('when a request went upstream, then its line carries upstream.attempts, the upstream latency and, when FaceID answered, its request_id', () => {
    const problems: string[] = [];
    for (const request of sent.filter((entry) => entry.upstream)) {
      const line = requestLines(request.target).find((entry) => entry.request_id === request.requestId);
      const upstream = line?.upstream as Record<string, unknown> | undefined;
      try {
        expect(upstream).toBeDefined();
        expect(typeof upstream?.attempts).toBe('number');
        if (request.expectedAttempts !== undefined) expect(upstream?.attempts).toBe(request.expectedAttempts);
        expect(typeof upstream?.upstreamMs).toBe('number');
        // FaceID's request_id looks like `<unix seconds>,<uuid>`.
        if (request.faceidAnswered) expect(upstream?.faceidRequestId).toMatch(/^\d{10},[0-9a-f-]{36}$/);
      } catch (error) {
        problems.push(`${request.label}: ${(error as Error).message.split('\n').slice(0, 12).join(' ')}`);
      }
    }
    expect(problems).toEqual([]);
  });

  test('when a request was refused locally or replayed, then its line names no upstream exchange', () => {
    const local = sent.filter((entry) => !entry.upstream);
    expect(local.length).toBeGreaterThan(0);
    for (const request of local) {
      const line = requestLines(request.target).find((entry) => entry.request_id === request.requestId);
      // The line must exist: a missing line has no `upstream` either, and would pass the second check.
      expect({ label: request.label, logged: line !== undefined }).toEqual({ label: request.label, logged: true });
      expect({ label: request.label, upstream: line?.upstream }).toEqual({ label: request.label, upstream: undefined });
    }
  });

  test('when an answer was a 5xx, then its request line is at level 50 (error), and a 2xx/4xx line is below it', () => {
    for (const request of sent) {
      const line = requestLines(request.target).find((entry) => entry.request_id === request.requestId);
      if (request.status >= 500)
        expect({ label: request.label, level: line?.level }).toEqual({ label: request.label, level: 50 });
      else
        expect({ label: request.label, level: (line?.level as number) < 50 }).toEqual({
          label: request.label,
          level: true,
        });
    }
  });
});

describe('X-Request-Id', () => {
  test('when the client sends a plain X-Request-Id, then it is echoed and the request line carries it', async () => {
    const offered = `client-${randomUUID()}.retry:2`;
    const response = await postToken(
      main,
      { fields: { comparison_type: '0', liveness_type: 'meglive' } },
      { 'X-Request-Id': offered },
    );
    expect(response.status).toBe(400);
    expect(response.headers['x-request-id']).toBe(offered);
    expect((response.body as { request_id?: unknown }).request_id).toBe(offered);
    const lines = requestLines(main).filter((line) => line.request_id === offered);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ code: 'MISSING_ARGUMENTS', res: { statusCode: 400 } });
  });

  test.each([
    ['spaces', 'my request id with spaces'],
    ['a tab', `id\twith-tab-${randomUUID()}`],
    ['a quote that tries to inject JSON', `x","level":60,"msg":"forged-${randomUUID()}`],
    ['200 characters', `a${randomUUID().replace(/-/g, '')}`.padEnd(200, 'b')],
  ])(
    'when the client sends an X-Request-Id with %s, then a generated id replaces it in the answer and the log',
    async (_what, offered) => {
      const response = await main.http().get('/healthz').set('X-Request-Id', offered);
      expect(response.status).toBe(200);
      const answered = String(response.headers['x-request-id']);
      expect(answered).not.toBe(offered);
      expect(answered).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
      expect(requestLines(main).filter((line) => line.request_id === answered)).toHaveLength(1);
      expect(main.log.text()).not.toContain(offered);
    },
  );

  // A newline cannot be sent at all: Node's HTTP client refuses it, and the server's parser ends the header
  // line there. What remains of such a value is covered by the cases above.
});

describe("the logger's own redaction (the second line of defence)", () => {
  const logged = (object: Record<string, unknown>): { line: Record<string, unknown>; text: string } => {
    const { destination, log } = captureLog();
    createLogger('info', destination).info(object, 'redaction probe');
    const [line] = log.lines();
    return { line: line ?? {}, text: log.text() };
  };

  test('when a line carries a secret under a known name at the top, nested or in headers, then only "[redacted]" is written', () => {
    const { line, text } = logged({
      sign: 'sign-value-1',
      Authorization: 'Bearer jwt-value-2',
      faceid: { credentials: { apiKey: 'key', apiSecret: 'secret-value-3' } },
      request: {
        headers: { authorization: 'Bearer jwt-value-4' },
        body: { idcard_number: ID_NUMBER, idcard_name: NAME },
      },
      list: [{ token: 'token-value-5' }],
      kept: { attempts: 2 },
      masked: { apiSecret: 'set', credentials: 'unset' },
      error: Object.assign(new Error('carries a sign'), { sign: 'sign-value-8' }),
      described: { toJSON: () => ({ authorization: 'Bearer jwt-value-9' }) },
    });
    for (const secret of [
      'sign-value-1',
      'jwt-value-2',
      'secret-value-3',
      'jwt-value-4',
      ID_NUMBER,
      NAME,
      'token-value-5',
      'sign-value-8',
      'jwt-value-9',
    ]) {
      expect(text).not.toContain(secret);
    }
    expect(line).toMatchObject({
      sign: '[redacted]',
      Authorization: '[redacted]',
      faceid: { credentials: '[redacted]' },
      request: {
        headers: { authorization: '[redacted]' },
        body: { idcard_number: '[redacted]', idcard_name: '[redacted]' },
      },
      list: [{ token: '[redacted]' }],
      kept: { attempts: 2 },
      // The start-up line's masks say only whether a secret is configured.
      masked: { apiSecret: 'set', credentials: 'unset' },
      error: { sign: '[redacted]' },
      described: { authorization: '[redacted]' },
    });
  });

  test('when a child logger (or its child) is bound to a secret at the top or nested, then its lines carry "[redacted]" instead', () => {
    const { destination, log } = captureLog();
    const child = createLogger('info', destination).child({
      request_id: 'r-1',
      sign: 'sign-value-6',
      upstream: { headers: { Authorization: 'Bearer jwt-value-10' } },
    });
    child.child({ nested: { idcard_number: ID_NUMBER } }).info('child probe');
    expect(log.text()).not.toMatch(new RegExp(`sign-value-6|jwt-value-10|${ID_NUMBER}`));
    expect(log.lines()[0]).toMatchObject({
      request_id: 'r-1',
      sign: '[redacted]',
      upstream: { headers: { Authorization: '[redacted]' } },
      nested: { idcard_number: '[redacted]' },
    });
  });

  test("when an object is logged, then the caller's object is left as it was and an error keeps its serialized shape", () => {
    // A sensitive property on the error itself: copying the error to censor it would lose what makes it one.
    const object = {
      nested: { sign: 'sign-value-7' },
      err: Object.assign(new Error('upstream broke'), { sign: 'sign-value-11' }),
    };
    const { line, text } = logged(object);
    expect(object.nested.sign).toBe('sign-value-7');
    expect(text).not.toMatch(/sign-value-7|sign-value-11/);
    expect(line).toMatchObject({ nested: { sign: '[redacted]' }, err: { type: 'Error', message: 'upstream broke' } });
  });
});
