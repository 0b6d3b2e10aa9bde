import http from 'node:http';
import type { AddressInfo } from 'node:net';
import Ajv2020 from 'ajv/dist/2020';
import addFormats from 'ajv-formats';
import type supertest from 'supertest';
import { ERROR_CATALOG } from '../src/errors/error-catalog';
import { jpeg } from './fixtures/images';
import { announceUpload } from './helpers/raw-request';
import {
  cleanupAfter,
  postToken,
  signToken,
  type TestService,
  type TokenForm,
  validForm,
  validIdcardForm,
} from './helpers/test-service';

/**
 * /openapi.json is valid OpenAPI 3.1 (checked by @readme/openapi-parser), documents the
 * endpoint's fields, error codes, headers and security, and the running app's real answers match it.
 */

type Json = Record<string, unknown>;

const { start, defer } = cleanupAfter(afterAll);

async function documentOf(target: TestService): Promise<Json> {
  const response = await target.http().get('/openapi.json');
  expect(response.status).toBe(200);
  expect(response.headers['content-type']).toMatch(/^application\/json/);
  return response.body as Json;
}

const at = (value: unknown, ...path: string[]): unknown =>
  path.reduce<unknown>(
    (node, key) => (typeof node === 'object' && node !== null ? (node as Json)[key] : undefined),
    value,
  );

const operationOf = (document: Json): Json => at(document, 'paths', '/v1/biz-tokens', 'post') as Json;

/** Follows a local `$ref` once. */
function resolve(document: Json, node: unknown): Json {
  const ref = (node as { $ref?: unknown } | undefined)?.$ref;
  if (typeof ref !== 'string') return node as Json;
  return at(document, ...ref.replace(/^#\//, '').split('/')) as Json;
}

const withBizNo = (bizNo: string, form: Required<TokenForm> = validForm()): Required<TokenForm> => ({
  fields: { ...form.fields, biz_no: bizNo },
  files: form.files,
});

let target: TestService;
let limited: TestService;
let document: Json;
let ajv: Ajv2020;

beforeAll(async () => {
  target = await start({ FACEID_TIMEOUT_MS: '800', FACEID_MAX_RETRIES: '1' });
  limited = await start({ RATE_LIMIT_MAX: '1' });
  document = await documentOf(target);
  ajv = new Ajv2020({ strict: false, allErrors: true });
  addFormats(ajv);
  // The whole document is one schema resource, so `#/components/schemas/...` references resolve as written.
  ajv.addSchema({ ...document, $id: 'urn:faceid-token-service:openapi' });
});

function validateAgainst(schemaName: string, value: unknown): string[] {
  const validate = ajv.getSchema(`urn:faceid-token-service:openapi#/components/schemas/${schemaName}`);
  if (validate === undefined) return [`no schema ${schemaName}`];
  return validate(value) ? [] : (validate.errors ?? []).map((error) => `${error.instancePath} ${error.message ?? ''}`);
}

describe('GET /openapi.json', () => {
  test('when validated with @readme/openapi-parser, then it is a valid OpenAPI 3.1 document', async () => {
    const parser = await import('@readme/openapi-parser');
    expect(document.openapi).toMatch(/^3\.1\.\d+$/);
    const result = await parser.validate(structuredClone(document) as never);
    expect({ valid: result.valid, errors: result.valid ? [] : result.errors, warnings: result.warnings }).toEqual({
      valid: true,
      errors: [],
      warnings: [],
    });
  });

  test('when read, then the multipart body documents exactly the client fields of CONTRACT section 1', () => {
    const schema = at(operationOf(document), 'requestBody', 'content', 'multipart/form-data', 'schema') as Json;
    // Written out from the contract, not derived from the service's own tables, so a table that drifts fails here.
    const expected = [
      'comparison_type',
      'liveness_type',
      'idcard_name',
      'idcard_number',
      'image_ref1',
      'image_ref2',
      'image',
      'biz_no',
      'liveness_timeout',
      'liveness_action_count',
      'eyes_close_detection',
      'fail_when_multiple_faces',
      'face_quality_threshold',
      'multi_oriented_detection',
    ];
    expect(Object.keys(schema.properties as Json).sort()).toEqual(expected.sort());
    expect(schema.additionalProperties).toBe(false);
    expect([...(schema.required as string[])].sort()).toEqual(['comparison_type', 'liveness_type']);
    for (const [name, property] of Object.entries(schema.properties as Record<string, Json>)) {
      expect({ name, described: typeof property.description === 'string' && property.description.length > 10 }).toEqual(
        { name, described: true },
      );
    }
    const properties = schema.properties as Record<string, Json>;
    expect(properties.comparison_type?.enum).toEqual(['0', '1']);
    expect(properties.liveness_type?.enum).toEqual(['meglive', 'still', 'raw_image']);
    for (const file of ['image_ref1', 'image_ref2', 'image']) expect(properties[file]?.contentMediaType).toBeDefined();
  });

  test.each<[string, number, number]>([
    ['liveness_timeout', 5, 60],
    ['liveness_action_count', 1, 3],
    ['face_quality_threshold', 0, 100],
  ])(
    'when read, then the schema of %s accepts exactly the whole numbers from %i to %i (the rule is machine-readable, not only prose)',
    (name, min, max) => {
      const properties = at(
        operationOf(document),
        'requestBody',
        'content',
        'multipart/form-data',
        'schema',
        'properties',
      ) as Record<string, Json>;
      const validate = ajv.compile({ ...properties[name], description: undefined });
      const verdicts = Object.fromEntries(
        [min - 1, min, max, max + 1, 999]
          .filter((value) => value >= 0)
          .map((value) => [String(value), validate(String(value))]),
      );
      expect(verdicts).toEqual(
        Object.fromEntries(Object.keys(verdicts).map((value) => [value, Number(value) >= min && Number(value) <= max])),
      );
      expect(validate('1.5')).toBe(false);
      expect(validate('05')).toBe(false);
    },
  );

  test('when AUTH_MODE=none, then uuid is a documented client field and no bearer token is required', async () => {
    const open = await start({ AUTH_MODE: 'none', AUTH_JWT_SECRET: '' });
    const openDocument = await documentOf(open);
    const properties = at(
      operationOf(openDocument),
      'requestBody',
      'content',
      'multipart/form-data',
      'schema',
      'properties',
    ) as Json;
    expect(Object.keys(properties)).toContain('uuid');
    expect(operationOf(openDocument).security ?? []).toEqual([]);
  });

  test('when read, then the error catalog holds exactly the rows of CONTRACT sections 2 and 7.1, plus 404 and 500, with their statuses', () => {
    // Written out from the contract: the document is built from the catalog, so only this list can catch a catalog that drifts.
    const contract: Record<string, number> = {
      MISSING_ARGUMENTS: 400,
      BAD_ARGUMENTS: 400,
      IMAGE_ERROR_UNSUPPORTED_FORMAT: 400,
      INVALID_IMAGE_SIZE: 400,
      NO_FACE_FOUND: 400,
      MULTIPLE_FACES: 400,
      LOW_QUALITY: 400,
      PAYLOAD_TOO_LARGE: 413,
      UNSUPPORTED_MEDIA_TYPE: 415,
      UNAUTHENTICATED: 401,
      IDEMPOTENCY_KEY_REUSED: 409,
      RATE_LIMITED: 429,
      COMPARISON_TYPE_NOT_PERMITTED: 403,
      RETRY_LIMIT_REACHED: 429,
      UPSTREAM_BUSY: 503,
      UPSTREAM_REJECTED: 502,
      UPSTREAM_ERROR: 502,
      UPSTREAM_TIMEOUT: 504,
      // Section 7.1: the verification route's own.
      MEGLIVE_DATA_ERROR: 400,
      MEGLIVE_DATA_BIZ_TOKEN_NOT_MATCH: 400,
      BIZ_TOKEN_NOT_FOUND: 404,
      // Not rows of the table, but answers every HTTP service gives: an unknown route, and a bug.
      NOT_FOUND: 404,
      INTERNAL_ERROR: 500,
    };
    expect(Object.fromEntries(Object.entries(ERROR_CATALOG).map(([code, entry]) => [code, entry.status]))).toEqual(
      contract,
    );
  });

  test('when read, then every error code of ERROR_CATALOG has an example problem, under the response of its status', () => {
    const examples = new Map<string, { status: string; value: Json }>();
    for (const [pathName, pathItem] of Object.entries(document.paths as Record<string, Json>)) {
      for (const operation of Object.values(pathItem) as Json[]) {
        for (const [status, response] of Object.entries((operation.responses ?? {}) as Record<string, Json>)) {
          const content = at(resolve(document, response), 'content', 'application/problem+json', 'examples') as
            | Record<string, { value: Json }>
            | undefined;
          for (const example of Object.values(content ?? {}))
            examples.set(String(example.value.code), { status, value: { ...example.value, path: pathName } });
        }
      }
    }
    // An unknown route belongs to no operation: its answer is the shared NotFound response.
    const notFound = at(
      document,
      'components',
      'responses',
      'NotFound',
      'content',
      'application/problem+json',
      'examples',
    ) as Record<string, { value: Json }>;
    for (const example of Object.values(notFound ?? {}))
      examples.set(String(example.value.code), { status: '404', value: example.value });
    const problems: string[] = [];
    for (const [code, entry] of Object.entries(ERROR_CATALOG)) {
      const example = examples.get(code);
      if (example === undefined) {
        problems.push(`${code}: no example`);
        continue;
      }
      if (example.status !== String(entry.status))
        problems.push(`${code}: under ${example.status}, not ${entry.status}`);
      const { path: _path, ...value } = example.value;
      if (value.status !== entry.status) problems.push(`${code}: example status ${String(value.status)}`);
      const errors = validateAgainst('Problem', value);
      if (errors.length > 0) problems.push(`${code}: ${errors.join('; ')}`);
    }
    expect(problems).toEqual([]);
  });

  test('when read, then Idempotency-Key and X-Request-Id are request headers and RateLimit, RateLimit-Policy, Retry-After response headers', () => {
    const operation = operationOf(document);
    const parameters = (operation.parameters as Json[]).map((parameter) => resolve(document, parameter));
    const header = (name: string): Json | undefined =>
      parameters.find((parameter) => parameter.in === 'header' && parameter.name === name);
    expect(header('Idempotency-Key')).toMatchObject({ required: false, schema: { maxLength: 255 } });
    expect(header('X-Request-Id')).toMatchObject({ required: false });
    const responses = operation.responses as Record<string, Json>;
    const headersOf = (status: string): string[] =>
      Object.keys((resolve(document, responses[status]).headers ?? {}) as Json);
    expect(headersOf('201')).toEqual(expect.arrayContaining(['X-Request-Id', 'RateLimit', 'RateLimit-Policy']));
    expect(headersOf('429')).toEqual(
      expect.arrayContaining(['X-Request-Id', 'Retry-After', 'RateLimit', 'RateLimit-Policy']),
    );
    expect(headersOf('503')).toEqual(expect.arrayContaining(['X-Request-Id', 'Retry-After']));
    for (const status of Object.keys(responses))
      expect({ status, headers: headersOf(status) }).toEqual({
        status,
        headers: expect.arrayContaining(['X-Request-Id']),
      });
    for (const name of ['X-Request-Id', 'Retry-After', 'RateLimit', 'RateLimit-Policy'])
      expect(at(document, 'components', 'headers', name)).toBeDefined();
  });

  test('when read, then the operation requires the bearer JWT scheme', () => {
    expect(at(document, 'components', 'securitySchemes', 'bearer')).toMatchObject({
      type: 'http',
      scheme: 'bearer',
      bearerFormat: 'JWT',
    });
    expect(operationOf(document).security).toEqual([{ bearer: [] }]);
  });
});

describe('real answers of the running app match the document', () => {
  const responsesOf = (): Record<string, Json> => operationOf(document).responses as Record<string, Json>;

  /** Checks one real answer: documented status, documented content type, body valid for its schema, documented code. */
  function expectDocumented(
    response: { status: number; headers: Record<string, unknown>; body: unknown },
    expectedStatus: number,
    expectedCode?: string,
  ): void {
    expect(response.status).toBe(expectedStatus);
    const documented = resolve(document, responsesOf()[String(response.status)]);
    expect({ status: response.status, documented: documented !== undefined }).toEqual({
      status: response.status,
      documented: true,
    });
    const contentType = String(response.headers['content-type']).split(';')[0]!;
    const media = at(documented, 'content', contentType) as Json | undefined;
    expect({ contentType, documented: media !== undefined }).toEqual({ contentType, documented: true });
    const schemaName = String((media?.schema as { $ref?: string } | undefined)?.$ref)
      .split('/')
      .pop()!;
    expect(validateAgainst(schemaName, response.body)).toEqual([]);
    if (expectedCode !== undefined) {
      expect((response.body as Json).code).toBe(expectedCode);
      expect(Object.keys((media?.examples ?? {}) as Json)).toContain(expectedCode);
    }
    // Every documented header is really sent (Idempotent-Replayed only on replays).
    for (const name of Object.keys((documented.headers ?? {}) as Json)) {
      if (name === 'Idempotent-Replayed') continue;
      if (name === 'Retry-After' && expectedCode === 'RETRY_LIMIT_REACHED') continue;
      expect({ header: name, sent: response.headers[name.toLowerCase()] !== undefined }).toEqual({
        header: name,
        sent: true,
      });
    }
  }

  test('when a token is issued, then the 201 body is a valid BizToken', async () => {
    const response = await postToken(target, validForm());
    expectDocumented(response, 201);
    expect(Object.keys(response.body as Json).sort()).toEqual(['biz_token', 'expires_at']);
  });

  test.each<[string, number, string, () => Promise<supertest.Response>]>([
    [
      'a missing field',
      400,
      'MISSING_ARGUMENTS',
      () => postToken(target, { fields: { comparison_type: '0', liveness_type: 'meglive' } }),
    ],
    [
      'a malformed field',
      400,
      'BAD_ARGUMENTS',
      () => postToken(target, { fields: { ...validIdcardForm().fields, liveness_timeout: '99' } }),
    ],
    [
      'a server-owned field',
      400,
      'BAD_ARGUMENTS',
      () => postToken(target, { fields: { ...validIdcardForm().fields, security_level: '1' } }),
    ],
    [
      'an image too wide',
      400,
      'INVALID_IMAGE_SIZE',
      () => postToken(target, { fields: validForm().fields, files: { image_ref1: jpeg(4097, 8) } }),
    ],
    ['no face (FaceID)', 400, 'NO_FACE_FOUND', () => postToken(target, withBizNo('sandbox:NO_FACE_FOUND'))],
    ['no JWT', 401, 'UNAUTHENTICATED', () => postToken(target, validForm(), { Authorization: '' })],
    [
      'a JWT of another issuer',
      401,
      'UNAUTHENTICATED',
      async () => postToken(target, validForm(), { Authorization: `Bearer ${await signToken({}, 'x'.repeat(40))}` }),
    ],
    [
      'no data-source permission (FaceID)',
      403,
      'COMPARISON_TYPE_NOT_PERMITTED',
      () => postToken(target, withBizNo('sandbox:NO_DATA_SOURCE_PERMISSION', validIdcardForm())),
    ],
    [
      'a JSON body',
      415,
      'UNSUPPORTED_MEDIA_TYPE',
      async () =>
        target
          .http()
          .post('/v1/biz-tokens')
          .set('Authorization', `Bearer ${await signToken()}`)
          .send({ comparison_type: '0' }),
    ],
    [
      "FaceID's retry limit",
      429,
      'RETRY_LIMIT_REACHED',
      () => postToken(target, withBizNo('sandbox:MORE_RETRY_TIMES')),
    ],
    [
      'FaceID INTERNAL_ERROR after retries',
      502,
      'UPSTREAM_ERROR',
      () => postToken(target, withBizNo('sandbox:INTERNAL_ERROR')),
    ],
    ['a wrong FaceID base URL', 502, 'UPSTREAM_REJECTED', () => postToken(target, withBizNo('sandbox:API_NOT_FOUND'))],
    [
      'FaceID busy after retries',
      503,
      'UPSTREAM_BUSY',
      () => postToken(target, withBizNo('sandbox:CONCURRENCY_LIMIT_EXCEEDED')),
    ],
    ['FaceID never answering', 504, 'UPSTREAM_TIMEOUT', () => postToken(target, withBizNo('sandbox:HANG'))],
  ])(
    'when the request has %s, then the %i problem body is a valid Problem documented under that status',
    async (_what, status, code, send) => {
      expectDocumented(await send(), status, code);
    },
  );

  test('when the same Idempotency-Key comes with another body, then the 409 problem is documented', async () => {
    const key = `reuse-${Date.now()}`;
    expect((await postToken(target, validForm(), { 'Idempotency-Key': key })).status).toBe(201);
    expectDocumented(
      await postToken(target, validIdcardForm(), { 'Idempotency-Key': key }),
      409,
      'IDEMPOTENCY_KEY_REUSED',
    );
  });

  test("when the user's rate limit is spent, then the 429 RATE_LIMITED problem and its headers are documented", async () => {
    expect((await postToken(limited)).status).toBe(201);
    expectDocumented(await postToken(limited), 429, 'RATE_LIMITED');
  });

  test('when the body is announced larger than 20 MB, then the 413 problem is documented', async () => {
    const server = http.createServer(target.service.app);
    await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
    defer(() => new Promise<void>((done) => server.close(() => done())));
    const { port } = server.address() as AddressInfo;
    const answer = await announceUpload(
      port,
      { Authorization: `Bearer ${await signToken()}`, 'Content-Type': 'multipart/form-data; boundary=b' },
      21 * 1024 * 1024,
      '--b\r\n',
    );
    const response = {
      status: answer.status,
      headers: answer.headers as Record<string, unknown>,
      body: JSON.parse(answer.text) as unknown,
    };
    expectDocumented(response, 413, 'PAYLOAD_TOO_LARGE');
  });
});
