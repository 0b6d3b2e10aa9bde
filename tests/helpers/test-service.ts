import { randomUUID } from 'node:crypto';
import { type JWTPayload, SignJWT } from 'jose';
import pino from 'pino';
import supertest from 'supertest';
import { createService, type Service } from '../../src/app';
import { type Config, loadConfig } from '../../src/config/load-config';
import { createLogger } from '../../src/logging/logger';
import { type Sandbox, startSandbox } from '../../src/sandbox/sandbox-server';
import { jpeg } from '../fixtures/images';

export const TEST_JWT_SECRET = 'test-jwt-secret-that-is-long-enough-0123456789';
export const SANDBOX_KEY = 'test-sandbox-key';
export const SANDBOX_SECRET = 'test-sandbox-secret';

/** Everything written to the log, as text and as parsed lines. */
export interface CapturedLog {
  text: () => string;
  lines: () => Array<Record<string, unknown>>;
}

export interface TestService {
  service: Service;
  config: Config;
  sandbox: Sandbox;
  log: CapturedLog;
  http: () => supertest.Agent;
  close: () => Promise<void>;
}

export function captureLog(): { destination: pino.DestinationStream; log: CapturedLog } {
  const chunks: string[] = [];
  return {
    destination: { write: (chunk: string) => void chunks.push(chunk) },
    log: {
      text: () => chunks.join(''),
      lines: () =>
        chunks
          .join('')
          .split('\n')
          .filter((line) => line.length > 0)
          .map((line) => JSON.parse(line) as Record<string, unknown>),
    },
  };
}

/** A sandbox on a loopback port; with `webhookSecret`, its webhook sink checks each delivery's signature. */
export async function startTestSandbox(latencyMs = 0, webhookSecret?: string): Promise<Sandbox> {
  return startSandbox({
    apiKey: SANDBOX_KEY,
    apiSecret: SANDBOX_SECRET,
    port: 0,
    host: '127.0.0.1',
    latencyMs,
    log: pino({ level: 'silent' }),
    webhookSecret,
  });
}

/** The service on loopback against a real sandbox (its own, or the one given), with JWT auth by default. */
export async function startTestService(
  env: Record<string, string | undefined> = {},
  sandbox?: Sandbox,
): Promise<TestService> {
  const upstream = sandbox ?? (await startTestSandbox());
  const config = loadConfig({
    NODE_ENV: 'test',
    LOG_LEVEL: 'info',
    AUTH_JWT_SECRET: TEST_JWT_SECRET,
    FACEID_BASE_URL: upstream.url,
    FACEID_API_KEY: SANDBOX_KEY,
    FACEID_API_SECRET: SANDBOX_SECRET,
    FACEID_TIMEOUT_MS: '3000',
    RATE_LIMIT_MAX: '1000',
    ...env,
  });
  const { destination, log } = captureLog();
  const service = createService(
    config,
    config.faceid.credentials ?? { apiKey: SANDBOX_KEY, apiSecret: SANDBOX_SECRET },
    createLogger(config.logLevel, destination),
  );
  return {
    service,
    config,
    sandbox: upstream,
    log,
    http: () => supertest.agent(service.app),
    close: async () => {
      await service.close();
      if (sandbox === undefined) await upstream.close();
    },
  };
}

export async function signToken(claims: JWTPayload = {}, secret = TEST_JWT_SECRET): Promise<string> {
  const jwt = new SignJWT({ ...claims }).setProtectedHeader({ alg: 'HS256' }).setIssuedAt();
  if (claims.sub === undefined) jwt.setSubject('user-1');
  if (claims.exp === undefined) jwt.setExpirationTime('5m');
  return jwt.sign(new TextEncoder().encode(secret));
}

export interface TokenForm {
  fields?: Record<string, string>;
  files?: Record<string, Buffer>;
}

/** A comparison_type 0 / meglive request that the sandbox accepts. */
export const validForm = (): Required<TokenForm> => ({
  fields: { comparison_type: '0', liveness_type: 'meglive' },
  files: { image_ref1: jpeg(64, 64) },
});

/** A comparison_type 1 request with a real-looking (valid check digit) ID number. */
export const validIdcardForm = (): Required<TokenForm> => ({
  fields: { comparison_type: '1', liveness_type: 'still', idcard_name: '张三', idcard_number: '11010519491231002X' },
  files: {},
});

/** POSTs a multipart token request through the HTTP surface. */
export async function postToken(
  target: Pick<TestService, 'http'>,
  form: TokenForm = validForm(),
  headers: Record<string, string> = {},
): Promise<supertest.Response> {
  // Authorization: '' sends no Authorization header at all.
  const { Authorization: given, ...rest } = headers;
  const authorization = given ?? `Bearer ${await signToken()}`;
  let request = target
    .http()
    .post('/v1/biz-tokens')
    .set(authorization === '' ? rest : { ...rest, Authorization: authorization });
  for (const [name, value] of Object.entries(form.fields ?? {})) request = request.field(name, value);
  for (const [name, bytes] of Object.entries(form.files ?? {}))
    request = request.attach(name, bytes, { filename: `${name}.jpg`, contentType: 'image/jpeg' });
  return request;
}

/** What a problem check needs from an answer, whichever client (supertest or a raw socket) got it. */
export interface ProblemAnswer {
  /** Undefined when no status line arrived. */
  status: number | undefined;
  headers: Record<string, string | string[] | undefined>;
  /** The parsed JSON body, or the raw text when it was not JSON. */
  body: unknown;
}

/**
 * The one strict check of an error answer (CONTRACT section 2): the status, an RFC 9457
 * `application/problem+json` body whose `status` and `code` match, `detail` a non-empty string and
 * `request_id` equal to the `X-Request-Id` header. `param`: a string must match exactly, `null` must be
 * absent, undefined is not checked (for answers where several fields could be named). Returns the body.
 */
export function expectProblemAnswer(
  answer: ProblemAnswer,
  status: number,
  code: string,
  param?: string | null,
): Record<string, unknown> {
  // One assertion over status and body first, so a failure shows what the service actually answered.
  expect({ status: answer.status, body: answer.body }).toMatchObject({ status, body: { status, code } });
  expect(answer.headers['content-type']).toMatch(/^application\/problem\+json(;|$)/);
  const body = answer.body as Record<string, unknown>;
  expect(typeof body.detail).toBe('string');
  expect((body.detail as string).length).toBeGreaterThan(0);
  const requestId = answer.headers['x-request-id'];
  expect(typeof requestId).toBe('string');
  expect((requestId as string).length).toBeGreaterThan(0);
  expect(body.request_id).toBe(requestId);
  if (param === null) expect(body).not.toHaveProperty('param');
  else if (param !== undefined) expect(body.param).toBe(param);
  return body;
}

/** {@link expectProblemAnswer} for a supertest response. */
export function expectProblem(
  response: supertest.Response,
  status: number,
  code: string,
  param?: string | null,
): Record<string, unknown> {
  return expectProblemAnswer(
    { status: response.status, headers: response.headers as ProblemAnswer['headers'], body: response.body as unknown },
    status,
    code,
    param,
  );
}

export const uniquePrefix = (): string => `test-${randomUUID().slice(0, 8)}:`;

/**
 * Cleanup that runs after each test or after all of them (as the given jest hook runs), whatever the tests
 * did: `start` starts a service and registers its close; `defer` registers any other close.
 */
export function cleanupAfter(after: (hook: () => Promise<void>) => void): {
  start: (env?: Record<string, string>) => Promise<TestService>;
  defer: (close: () => Promise<unknown> | unknown) => void;
} {
  const opened: Array<() => Promise<unknown> | unknown> = [];
  after(async () => {
    for (const close of opened.splice(0).reverse()) await close();
  });
  return {
    defer: (close) => void opened.push(close),
    start: async (env = {}) => {
      const target = await startTestService(env);
      opened.push(target.close);
      return target;
    },
  };
}
