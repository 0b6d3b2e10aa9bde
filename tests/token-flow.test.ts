import type supertest from 'supertest';
import { bmp, gif1x1, jpeg, png, textNamedJpg, truncated } from './fixtures/images';
import {
  expectProblem,
  postToken,
  signToken,
  startTestService,
  type TestService,
  validForm,
  validIdcardForm,
} from './helpers/test-service';

let target: TestService;
beforeAll(async () => {
  target = await startTestService();
});
afterAll(() => target.close());

// ---------------------------------------------------------------------------------------------------------
// Helpers: forms, raw parts (for repeats and wrong kinds), and the assertions every refusal shares.
// ---------------------------------------------------------------------------------------------------------

interface Form {
  fields: Record<string, string>;
  files: Record<string, Buffer>;
}

/** A copy of `base` with fields and files set, or removed where the value is undefined. */
function change(
  base: Form,
  fields: Record<string, string | undefined> = {},
  files: Record<string, Buffer | undefined> = {},
): Form {
  const result: Form = { fields: { ...base.fields }, files: { ...base.files } };
  for (const [name, value] of Object.entries(fields)) {
    if (value === undefined) delete result.fields[name];
    else result.fields[name] = value;
  }
  for (const [name, bytes] of Object.entries(files)) {
    if (bytes === undefined) delete result.files[name];
    else result.files[name] = bytes;
  }
  return result;
}

const c0Meglive = (): Form => validForm();
const c1Still = (): Form => validIdcardForm();
const c0Still = (): Form => ({
  fields: { comparison_type: '0', liveness_type: 'still' },
  files: { image_ref1: jpeg(64, 64) },
});
const c0Raw = (): Form => ({
  fields: { comparison_type: '0', liveness_type: 'raw_image' },
  files: { image_ref1: jpeg(64, 64), image: jpeg(64, 64) },
});
const c1Raw = (): Form => ({
  fields: { ...validIdcardForm().fields, liveness_type: 'raw_image' },
  files: { image: jpeg(64, 64) },
});

type Part = { name: string; value: string } | { name: string; file: Buffer };

/** Sends parts in this order; unlike postToken it can repeat a name or send a name as the wrong kind. */
async function sendParts(
  service: TestService,
  parts: Part[],
  headers: Record<string, string> = {},
): Promise<supertest.Response> {
  const { Authorization: given, ...rest } = headers;
  const authorization = given ?? `Bearer ${await signToken()}`;
  let request = service
    .http()
    .post('/v1/biz-tokens')
    .set(authorization === '' ? rest : { ...rest, Authorization: authorization });
  for (const part of parts) {
    request =
      'file' in part
        ? request.attach(part.name, part.file, { filename: `${part.name}.jpg`, contentType: 'image/jpeg' })
        : request.field(part.name, part.value);
  }
  return request;
}

const partsOf = (form: Form): Part[] => [
  ...Object.entries(form.fields).map(([name, value]) => ({ name, value })),
  ...Object.entries(form.files).map(([name, file]) => ({ name, file })),
];

interface UpstreamMark {
  length: number;
  last: unknown;
}

/** `received` keeps the last 200 requests: comparing the last entry too keeps "no new call" exact at the cap. */
const upstreamMark = (service: TestService): UpstreamMark => ({
  length: service.sandbox.received.length,
  last: service.sandbox.received.at(-1),
});

function expectNoUpstreamCall(service: TestService, before: UpstreamMark): void {
  expect(upstreamMark(service)).toEqual(before);
  expect(service.sandbox.received.at(-1)).toBe(before.last);
}

interface Expected {
  /** 400 when not given. */
  status?: number;
  code: string;
  /** Undefined: the caller checks the param itself. */
  param?: string;
}

/** The request is refused locally with this problem (the shared strict check), and nothing went upstream. */
async function expectRefused(
  service: TestService,
  send: () => Promise<supertest.Response>,
  { status = 400, code, param }: Expected,
): Promise<supertest.Response> {
  const before = upstreamMark(service);
  const response = await send();
  expectProblem(response, status, code, param);
  expectNoUpstreamCall(service, before);
  return response;
}

/** The request is accepted and forwarded once; returns what the sandbox received. */
async function expectAccepted(service: TestService, send: () => Promise<supertest.Response>) {
  const before = service.sandbox.received.at(-1);
  const response = await send();
  expect({ status: response.status, body: response.body as unknown }).toMatchObject({
    status: 201,
    body: { biz_token: expect.any(String) },
  });
  const received = service.sandbox.received.at(-1);
  expect(received).toBeDefined();
  expect(received).not.toBe(before);
  return received!;
}

const bearer = async (sub: string): Promise<Record<string, string>> => ({
  Authorization: `Bearer ${await signToken({ sub })}`,
});

// ---------------------------------------------------------------------------------------------------------

describe('POST /v1/biz-tokens', () => {
  test('when a valid comparison_type 0 request arrives, then it answers 201 with only biz_token and expires_at', async () => {
    const started = Date.now();
    const response = await postToken(target, validForm());
    expect(response.status).toBe(201);
    expect(Object.keys(response.body).sort()).toEqual(['biz_token', 'expires_at']);
    expect(response.body.biz_token).toMatch(/^\d{10},[0-9a-f-]{36}$/);
    const expiresAt = Date.parse(response.body.expires_at as string);
    expect(expiresAt - started).toBeGreaterThanOrEqual(3600_000 - 1000);
    expect(expiresAt - started).toBeLessThanOrEqual(3600_000 + 1000);
    expect(response.headers['x-request-id']).toBeDefined();
  });

  test('when a valid comparison_type 1 request arrives, then the ID number is forwarded with an upper-case X', async () => {
    const form = validIdcardForm();
    form.fields.idcard_number = form.fields.idcard_number.toLowerCase();
    const response = await postToken(target, form);
    expect(response.status).toBe(201);
    expect(target.sandbox.received.at(-1)?.fields.idcard_number).toEqual(['11010519491231002X']);
  });
});

describe('field rules of the seed', () => {
  const chinese = (count: number): string => '中'.repeat(count); // 3 bytes each in UTF-8

  const refusals: Array<{ when: string; form: () => Form; code: string; param: string }> = [
    {
      when: 'comparison_type is missing',
      form: () => change(c0Meglive(), { comparison_type: undefined }),
      code: 'MISSING_ARGUMENTS',
      param: 'comparison_type',
    },
    {
      when: 'liveness_type is missing',
      form: () => change(c0Meglive(), { liveness_type: undefined }),
      code: 'MISSING_ARGUMENTS',
      param: 'liveness_type',
    },
    {
      when: 'comparison_type is "2"',
      form: () => change(c0Meglive(), { comparison_type: '2' }),
      code: 'BAD_ARGUMENTS',
      param: 'comparison_type',
    },
    {
      when: 'comparison_type is "00"',
      form: () => change(c0Meglive(), { comparison_type: '00' }),
      code: 'BAD_ARGUMENTS',
      param: 'comparison_type',
    },
    {
      when: 'liveness_type is "video"',
      form: () => change(c0Meglive(), { liveness_type: 'video' }),
      code: 'BAD_ARGUMENTS',
      param: 'liveness_type',
    },
    {
      when: 'liveness_type is "MEGLIVE"',
      form: () => change(c0Meglive(), { liveness_type: 'MEGLIVE' }),
      code: 'BAD_ARGUMENTS',
      param: 'liveness_type',
    },
    // idcard_name / idcard_number belong to comparison_type 1
    {
      when: 'comparison_type 1 comes without idcard_name',
      form: () => change(c1Still(), { idcard_name: undefined }),
      code: 'MISSING_ARGUMENTS',
      param: 'idcard_name',
    },
    {
      when: 'comparison_type 1 comes without idcard_number',
      form: () => change(c1Still(), { idcard_number: undefined }),
      code: 'MISSING_ARGUMENTS',
      param: 'idcard_number',
    },
    {
      when: 'comparison_type 0 comes with idcard_name',
      form: () => change(c0Meglive(), { idcard_name: '张三' }),
      code: 'BAD_ARGUMENTS',
      param: 'idcard_name',
    },
    {
      when: 'comparison_type 0 comes with idcard_number',
      form: () => change(c0Meglive(), { idcard_number: '11010519491231002X' }),
      code: 'BAD_ARGUMENTS',
      param: 'idcard_number',
    },
    // image_ref1 / image
    {
      when: 'comparison_type 0 comes without image_ref1',
      form: () => change(c0Meglive(), {}, { image_ref1: undefined }),
      code: 'MISSING_ARGUMENTS',
      param: 'image_ref1',
    },
    {
      when: 'raw_image comes without image',
      form: () => change(c0Raw(), {}, { image: undefined }),
      code: 'MISSING_ARGUMENTS',
      param: 'image',
    },
    {
      when: 'comparison_type 1 raw_image comes without image',
      form: () => change(c1Raw(), {}, { image: undefined }),
      code: 'MISSING_ARGUMENTS',
      param: 'image',
    },
    {
      when: 'meglive comes with image',
      form: () => change(c0Meglive(), {}, { image: jpeg(64, 64) }),
      code: 'BAD_ARGUMENTS',
      param: 'image',
    },
    {
      when: 'still comes with image',
      form: () => change(c1Still(), {}, { image: jpeg(64, 64) }),
      code: 'BAD_ARGUMENTS',
      param: 'image',
    },
    // biz_no: at most 128 bytes in UTF-8
    {
      when: 'biz_no is 43 Chinese characters (129 bytes)',
      form: () => change(c0Meglive(), { biz_no: chinese(43) }),
      code: 'BAD_ARGUMENTS',
      param: 'biz_no',
    },
    {
      when: 'biz_no is 129 ASCII bytes',
      form: () => change(c0Meglive(), { biz_no: 'b'.repeat(129) }),
      code: 'BAD_ARGUMENTS',
      param: 'biz_no',
    },
    // liveness_timeout: integer in [5, 60]
    ...['4', '61', '5.0', ' 5', '5 ', 'abc', '-5', '1e1', '0x10'].map((value) => ({
      when: `liveness_timeout is ${JSON.stringify(value)}`,
      form: () => change(c0Meglive(), { liveness_timeout: value }),
      code: 'BAD_ARGUMENTS',
      param: 'liveness_timeout',
    })),
    // liveness_action_count: [1, 3], meglive only
    ...['0', '4', 'two', '1.5'].map((value) => ({
      when: `liveness_action_count is ${JSON.stringify(value)}`,
      form: () => change(c0Meglive(), { liveness_action_count: value }),
      code: 'BAD_ARGUMENTS',
      param: 'liveness_action_count',
    })),
    {
      when: 'liveness_action_count comes with still',
      form: () => change(c0Still(), { liveness_action_count: '2' }),
      code: 'BAD_ARGUMENTS',
      param: 'liveness_action_count',
    },
    {
      when: 'liveness_action_count comes with raw_image',
      form: () => change(c0Raw(), { liveness_action_count: '2' }),
      code: 'BAD_ARGUMENTS',
      param: 'liveness_action_count',
    },
    // eyes_close_detection: "0"/"1", still only
    {
      when: 'eyes_close_detection is "2"',
      form: () => change(c0Still(), { eyes_close_detection: '2' }),
      code: 'BAD_ARGUMENTS',
      param: 'eyes_close_detection',
    },
    {
      when: 'eyes_close_detection is "true"',
      form: () => change(c0Still(), { eyes_close_detection: 'true' }),
      code: 'BAD_ARGUMENTS',
      param: 'eyes_close_detection',
    },
    {
      when: 'eyes_close_detection comes with meglive',
      form: () => change(c0Meglive(), { eyes_close_detection: '1' }),
      code: 'BAD_ARGUMENTS',
      param: 'eyes_close_detection',
    },
    {
      when: 'eyes_close_detection comes with raw_image',
      form: () => change(c0Raw(), { eyes_close_detection: '1' }),
      code: 'BAD_ARGUMENTS',
      param: 'eyes_close_detection',
    },
    // fail_when_multiple_faces / face_quality_threshold: raw_image only
    {
      when: 'fail_when_multiple_faces is "2"',
      form: () => change(c0Raw(), { fail_when_multiple_faces: '2' }),
      code: 'BAD_ARGUMENTS',
      param: 'fail_when_multiple_faces',
    },
    {
      when: 'fail_when_multiple_faces comes with meglive',
      form: () => change(c0Meglive(), { fail_when_multiple_faces: '1' }),
      code: 'BAD_ARGUMENTS',
      param: 'fail_when_multiple_faces',
    },
    {
      when: 'fail_when_multiple_faces comes with still',
      form: () => change(c1Still(), { fail_when_multiple_faces: '0' }),
      code: 'BAD_ARGUMENTS',
      param: 'fail_when_multiple_faces',
    },
    ...['101', '-1', '50.5', 'high'].map((value) => ({
      when: `face_quality_threshold is ${JSON.stringify(value)}`,
      form: () => change(c0Raw(), { face_quality_threshold: value }),
      code: 'BAD_ARGUMENTS',
      param: 'face_quality_threshold',
    })),
    {
      when: 'face_quality_threshold comes with still',
      form: () => change(c0Still(), { face_quality_threshold: '50' }),
      code: 'BAD_ARGUMENTS',
      param: 'face_quality_threshold',
    },
    {
      when: 'face_quality_threshold comes with meglive',
      form: () => change(c0Meglive(), { face_quality_threshold: '50' }),
      code: 'BAD_ARGUMENTS',
      param: 'face_quality_threshold',
    },
    // multi_oriented_detection: "0"/"1"
    {
      when: 'multi_oriented_detection is "2"',
      form: () => change(c0Meglive(), { multi_oriented_detection: '2' }),
      code: 'BAD_ARGUMENTS',
      param: 'multi_oriented_detection',
    },
    {
      when: 'multi_oriented_detection is "yes"',
      form: () => change(c0Meglive(), { multi_oriented_detection: 'yes' }),
      code: 'BAD_ARGUMENTS',
      param: 'multi_oriented_detection',
    },
  ];

  test.each(refusals)(
    'when $when, then 400 $code names $param and nothing goes upstream',
    async ({ form, code, param }) => {
      await expectRefused(target, () => sendParts(target, partsOf(form())), { code, param });
    },
  );

  const acceptances: Array<{ when: string; form: () => Form; forwarded: Record<string, string> }> = [
    {
      when: 'liveness_timeout is "5"',
      form: () => change(c0Meglive(), { liveness_timeout: '5' }),
      forwarded: { liveness_timeout: '5' },
    },
    {
      when: 'liveness_timeout is "60"',
      form: () => change(c1Still(), { liveness_timeout: '60' }),
      forwarded: { liveness_timeout: '60' },
    },
    {
      when: 'biz_no is 42 Chinese characters (126 bytes)',
      form: () => change(c0Meglive(), { biz_no: chinese(42) }),
      forwarded: { biz_no: chinese(42) },
    },
    {
      when: 'biz_no is 128 ASCII bytes',
      form: () => change(c0Meglive(), { biz_no: 'b'.repeat(128) }),
      forwarded: { biz_no: 'b'.repeat(128) },
    },
    {
      when: 'comparison_type 1 comes with image_ref1 and image_ref2',
      form: () => change(c1Still(), {}, { image_ref1: jpeg(64, 64), image_ref2: png(32, 32) }),
      forwarded: {},
    },
    {
      when: 'liveness_action_count is "1" with meglive',
      form: () => change(c0Meglive(), { liveness_action_count: '1' }),
      forwarded: { liveness_action_count: '1' },
    },
    {
      when: 'liveness_action_count is "3" with meglive',
      form: () => change(c0Meglive(), { liveness_action_count: '3' }),
      forwarded: { liveness_action_count: '3' },
    },
    {
      when: 'eyes_close_detection is "0" with still',
      form: () => change(c0Still(), { eyes_close_detection: '0' }),
      forwarded: { eyes_close_detection: '0' },
    },
    {
      when: 'eyes_close_detection is "1" with still',
      form: () => change(c1Still(), { eyes_close_detection: '1' }),
      forwarded: { eyes_close_detection: '1' },
    },
    {
      when: 'fail_when_multiple_faces "0" and face_quality_threshold "0" come with raw_image',
      form: () => change(c0Raw(), { fail_when_multiple_faces: '0', face_quality_threshold: '0' }),
      forwarded: { fail_when_multiple_faces: '0', face_quality_threshold: '0' },
    },
    {
      when: 'fail_when_multiple_faces "1" and face_quality_threshold "100" come with raw_image',
      form: () => change(c1Raw(), { fail_when_multiple_faces: '1', face_quality_threshold: '100' }),
      forwarded: { fail_when_multiple_faces: '1', face_quality_threshold: '100' },
    },
    {
      when: 'multi_oriented_detection is "0"',
      form: () => change(c0Meglive(), { multi_oriented_detection: '0' }),
      forwarded: { multi_oriented_detection: '0' },
    },
    {
      when: 'multi_oriented_detection is "1" with still',
      form: () => change(c1Still(), { multi_oriented_detection: '1' }),
      forwarded: { multi_oriented_detection: '1' },
    },
  ];

  test.each(acceptances)('when $when, then it is accepted and forwarded unchanged', async ({ form, forwarded }) => {
    const sent = form();
    const received = await expectAccepted(target, () => sendParts(target, partsOf(sent)));
    for (const [name, value] of Object.entries(forwarded))
      expect({ name, value: received.fields[name] }).toEqual({ name, value: [value] });
    for (const [name, bytes] of Object.entries(sent.files))
      expect({ name, sizes: received.files[name] }).toEqual({ name, sizes: [bytes.length] });
  });
});

describe('fields a client may not send', () => {
  const serverOwned: Array<[string, string]> = [
    ['uuid', 'my-own-uuid'],
    ['security_level', '1'],
    ['force_compare', '1'],
    ['verbose', '1'],
    ['return_faces', '1'],
    ['sign', 'c2lnbg=='],
    ['sign_version', 'hmac_sha1'],
  ];

  test.each(serverOwned)(
    'when the client sends the service-owned field %s under JWT auth, then 400 BAD_ARGUMENTS names it',
    async (name, value) => {
      await expectRefused(target, () => sendParts(target, [...partsOf(c0Meglive()), { name, value }]), {
        code: 'BAD_ARGUMENTS',
        param: name,
      });
    },
  );

  test('when the client sends security_level with comparison_type 1, then 400 BAD_ARGUMENTS names it', async () => {
    await expectRefused(
      target,
      () => sendParts(target, [...partsOf(c1Still()), { name: 'security_level', value: '4' }]),
      {
        code: 'BAD_ARGUMENTS',
        param: 'security_level',
      },
    );
  });

  test('when an unknown text field is sent, then 400 BAD_ARGUMENTS names it', async () => {
    await expectRefused(
      target,
      () => sendParts(target, [...partsOf(c0Meglive()), { name: 'callback_url', value: 'https://example.com' }]),
      {
        code: 'BAD_ARGUMENTS',
        param: 'callback_url',
      },
    );
  });

  test('when an unknown file is sent, then 400 BAD_ARGUMENTS names it', async () => {
    await expectRefused(
      target,
      () => sendParts(target, [...partsOf(c0Meglive()), { name: 'image_ref3', file: jpeg(64, 64) }]),
      {
        code: 'BAD_ARGUMENTS',
        param: 'image_ref3',
      },
    );
  });

  test('when a text field is repeated with the same value, then 400 BAD_ARGUMENTS names it', async () => {
    await expectRefused(
      target,
      () => sendParts(target, [...partsOf(c0Meglive()), { name: 'liveness_type', value: 'meglive' }]),
      {
        code: 'BAD_ARGUMENTS',
        param: 'liveness_type',
      },
    );
  });

  test('when biz_no is repeated, then 400 BAD_ARGUMENTS names it', async () => {
    const parts: Part[] = [...partsOf(c0Meglive()), { name: 'biz_no', value: 'a' }, { name: 'biz_no', value: 'b' }];
    await expectRefused(target, () => sendParts(target, parts), { code: 'BAD_ARGUMENTS', param: 'biz_no' });
  });

  test('when image_ref1 is sent twice, then 400 BAD_ARGUMENTS names it', async () => {
    await expectRefused(
      target,
      () => sendParts(target, [...partsOf(c0Meglive()), { name: 'image_ref1', file: jpeg(64, 64) }]),
      {
        code: 'BAD_ARGUMENTS',
        param: 'image_ref1',
      },
    );
  });

  test('when biz_no is sent as a file, then 400 BAD_ARGUMENTS names it', async () => {
    await expectRefused(
      target,
      () => sendParts(target, [...partsOf(c0Meglive()), { name: 'biz_no', file: Buffer.from('order-1') }]),
      {
        code: 'BAD_ARGUMENTS',
        param: 'biz_no',
      },
    );
  });

  test('when comparison_type is sent as a file, then 400 BAD_ARGUMENTS names it', async () => {
    const parts: Part[] = [
      { name: 'comparison_type', file: Buffer.from('0') },
      { name: 'liveness_type', value: 'meglive' },
      { name: 'image_ref1', file: jpeg(64, 64) },
    ];
    await expectRefused(target, () => sendParts(target, parts), { code: 'BAD_ARGUMENTS', param: 'comparison_type' });
  });

  test('when image_ref1 is sent as a text value, then 400 BAD_ARGUMENTS names it', async () => {
    const parts: Part[] = [
      { name: 'comparison_type', value: '0' },
      { name: 'liveness_type', value: 'meglive' },
      { name: 'image_ref1', value: jpeg(8, 8).toString('base64') },
    ];
    await expectRefused(target, () => sendParts(target, parts), { code: 'BAD_ARGUMENTS', param: 'image_ref1' });
  });
});

describe('uuid under AUTH_MODE=none', () => {
  let open: TestService;
  beforeAll(async () => {
    open = await startTestService({ AUTH_MODE: 'none', AUTH_JWT_SECRET: undefined });
  });
  afterAll(() => open.close());
  const noAuth = { Authorization: '' };

  test('when comparison_type 0 comes without uuid, then 400 MISSING_ARGUMENTS names uuid', async () => {
    await expectRefused(open, () => sendParts(open, partsOf(c0Meglive()), noAuth), {
      code: 'MISSING_ARGUMENTS',
      param: 'uuid',
    });
  });

  test('when uuid is 129 bytes (43 Chinese characters), then 400 BAD_ARGUMENTS names uuid', async () => {
    await expectRefused(open, () => sendParts(open, partsOf(change(c0Meglive(), { uuid: '中'.repeat(43) })), noAuth), {
      code: 'BAD_ARGUMENTS',
      param: 'uuid',
    });
  });

  test('when uuid is 129 ASCII bytes, then 400 BAD_ARGUMENTS names uuid', async () => {
    await expectRefused(open, () => sendParts(open, partsOf(change(c0Meglive(), { uuid: 'u'.repeat(129) })), noAuth), {
      code: 'BAD_ARGUMENTS',
      param: 'uuid',
    });
  });

  test('when uuid is exactly 128 bytes, then it is forwarded unchanged', async () => {
    const uuid = `${'中'.repeat(42)}ab`;
    expect(Buffer.byteLength(uuid)).toBe(128);
    const received = await expectAccepted(open, () => sendParts(open, partsOf(change(c0Meglive(), { uuid })), noAuth));
    expect(received.fields.uuid).toEqual([uuid]);
  });

  test('when comparison_type 1 comes with uuid, then 400 BAD_ARGUMENTS names uuid', async () => {
    await expectRefused(open, () => sendParts(open, partsOf(change(c1Still(), { uuid: 'device-1' })), noAuth), {
      code: 'BAD_ARGUMENTS',
      param: 'uuid',
    });
  });

  test('when comparison_type 1 comes without uuid, then no uuid is sent upstream', async () => {
    const received = await expectAccepted(open, () => sendParts(open, partsOf(c1Still()), noAuth));
    expect(received.fields.uuid).toBeUndefined();
  });
});

describe('ID numbers', () => {
  const WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
  /** GB 11643 MOD 11-2: the 17 digits followed by their check character. */
  const withCheck = (first17: string): string =>
    first17 +
    '10X98765432'[[...first17].reduce((sum, digit, index) => sum + Number(digit) * (WEIGHTS[index] ?? 0), 0) % 11];
  const NAME = '欧阳娜娜';
  const sentNumbers: string[] = [];

  // Each example carries the shape its `when` claims (checked before it is sent), so an example that drifted
  // (e.g. withCheck yielding X where a digit was meant) fails instead of testing something else.
  const valid: Array<{ when: string; number: string; forwarded: string; shape: RegExp }> = [
    { when: 'the number ends in X', number: '11010519491231002X', forwarded: '11010519491231002X', shape: /^\d{17}X$/ },
    {
      when: 'the number ends in a digit',
      number: withCheck('44030419900101001'),
      forwarded: withCheck('44030419900101001'),
      shape: /^\d{18}$/,
    },
    {
      when: 'the number ends in a lower-case x',
      number: '11010519491231002x',
      forwarded: '11010519491231002X',
      shape: /^\d{17}x$/,
    },
    {
      when: 'the birth date is 29 February of a leap year',
      number: withCheck('11010520000229003'),
      forwarded: withCheck('11010520000229003'),
      shape: /^\d{6}20000229\d{3}[\dX]$/,
    },
  ];

  test.each(valid)(
    'when $when ($number), then it is accepted and $forwarded is forwarded',
    async ({ number, forwarded, shape }) => {
      expect(number).toMatch(shape);
      sentNumbers.push(number);
      const received = await expectAccepted(target, () =>
        sendParts(target, partsOf(change(c1Still(), { idcard_name: NAME, idcard_number: number }))),
      );
      expect(received.fields.idcard_number).toEqual([forwarded]);
      expect(received.fields.idcard_name).toEqual([NAME]);
    },
  );

  /** `checkDigitRight`: only the date is wrong, so the check character must be right for the refusal to mean that. */
  const invalid: Array<{ when: string; number: string; checkDigitRight?: true }> = [
    { when: 'the check character is wrong (X expected)', number: '110105194912310021' },
    { when: 'the check digit is wrong (1 expected)', number: `${'44030419900101001'}2` },
    { when: 'the birth date is 30 February', number: withCheck('11010519900230002'), checkDigitRight: true },
    {
      when: 'the birth date is 29 February of a common year',
      number: withCheck('11010519990229002'),
      checkDigitRight: true,
    },
    { when: 'the birth month is 13', number: withCheck('11010519901301002'), checkDigitRight: true },
    { when: 'the birth day is 00', number: withCheck('11010519900100002'), checkDigitRight: true },
    { when: 'the birth date is in the future', number: withCheck('11010520991231002'), checkDigitRight: true },
    { when: 'it has 17 characters', number: '11010519491231002' },
    { when: 'it has 19 characters', number: '11010519491231002X1' },
    { when: 'it has a letter in the middle', number: '1101051949A231002X' },
    { when: 'it ends in a letter other than X', number: '11010519491231002Y' },
    { when: 'it has an X in the middle', number: '110105X9491231002X' },
    { when: 'it has full-width digits', number: '１１０１０５１９４９１２３１００２X' },
  ];

  test.each(invalid)(
    'when $when ($number), then 400 BAD_ARGUMENTS names idcard_number and the body holds neither the number nor the name',
    async ({ number, checkDigitRight }) => {
      // The check digit of the examples with a bad date is right: the service can only refuse them for the date.
      if (checkDigitRight) expect(withCheck(number.slice(0, 17))).toBe(number);
      sentNumbers.push(number);
      const response = await expectRefused(
        target,
        () => sendParts(target, partsOf(change(c1Still(), { idcard_name: NAME, idcard_number: number }))),
        {
          code: 'BAD_ARGUMENTS',
          param: 'idcard_number',
        },
      );
      expect(response.text).not.toContain(number);
      expect(response.text).not.toContain(number.toUpperCase());
      expect(response.text).not.toContain(number.slice(6, 14)); // not even the birth date
      expect(response.text).not.toContain(NAME);
    },
  );

  test('when idcard_name is longer than 64 characters, then 400 BAD_ARGUMENTS names it and the body does not hold the name', async () => {
    const name = NAME.repeat(17);
    const response = await expectRefused(
      target,
      () => sendParts(target, partsOf(change(c1Still(), { idcard_name: name }))),
      { code: 'BAD_ARGUMENTS', param: 'idcard_name' },
    );
    expect(response.text).not.toContain(NAME);
  });

  test('when a name and number come with comparison_type 0, then the refusal holds neither', async () => {
    const number = withCheck('44030419900101001');
    const response = await expectRefused(
      target,
      () => sendParts(target, partsOf(change(c0Meglive(), { idcard_name: NAME, idcard_number: number }))),
      {
        code: 'BAD_ARGUMENTS',
      },
    );
    expect(['idcard_name', 'idcard_number']).toContain((response.body as { param?: string }).param);
    expect(response.text).not.toContain(number);
    expect(response.text).not.toContain(NAME);
  });

  test('when ID numbers and names were sent, accepted or refused, then the log holds none of them', async () => {
    // Self-contained (one accepted, one refused), and it also covers every number the tests above sent.
    const accepted = withCheck('32010219851111444');
    const refused = withCheck('32010219851131444');
    sentNumbers.push(accepted, refused);
    await expectAccepted(target, () =>
      sendParts(target, partsOf(change(c1Still(), { idcard_name: NAME, idcard_number: accepted }))),
    );
    await expectRefused(
      target,
      () => sendParts(target, partsOf(change(c1Still(), { idcard_name: NAME, idcard_number: refused }))),
      {
        code: 'BAD_ARGUMENTS',
        param: 'idcard_number',
      },
    );
    const log = target.log.text();
    expect(log.length).toBeGreaterThan(0);
    for (const number of sentNumbers) expect(log).not.toContain(number);
    expect(log).not.toContain(NAME);
    expect(log).not.toContain('张三');
  });
});

describe('images', () => {
  test.each([
    ['JPEG', () => jpeg(64, 64)],
    ['PNG', () => png(64, 64)],
    ['BMP', () => bmp(64, 64)],
  ])('when image_ref1 is a real %s, then it is accepted and forwarded with all its bytes', async (_format, make) => {
    const bytes = make();
    const received = await expectAccepted(target, () =>
      sendParts(target, partsOf(change(c0Meglive(), {}, { image_ref1: bytes }))),
    );
    expect(received.files).toEqual({ image_ref1: [bytes.length] });
  });

  test('when raw_image comes with a PNG image and a BMP image_ref2, then all three images are forwarded', async () => {
    const form = change(c0Raw(), {}, { image: png(48, 48), image_ref2: bmp(40, 40) });
    const received = await expectAccepted(target, () => sendParts(target, partsOf(form)));
    expect(received.files).toEqual({
      image_ref1: [form.files.image_ref1?.length],
      image_ref2: [form.files.image_ref2?.length],
      image: [form.files.image?.length],
    });
  });

  const broken: Array<[string, () => Buffer]> = [
    ['a truncated JPEG', () => truncated(jpeg(64, 64))],
    ['a truncated PNG', () => truncated(png(64, 64))],
    ['a truncated BMP', () => truncated(bmp(64, 64))],
    ['a text file named .jpg', () => textNamedJpg()],
    ['a GIF', () => gif1x1()],
  ];

  test.each(broken)(
    'when image_ref1 is %s, then 400 IMAGE_ERROR_UNSUPPORTED_FORMAT names image_ref1',
    async (_what, make) => {
      await expectRefused(target, () => sendParts(target, partsOf(change(c0Meglive(), {}, { image_ref1: make() }))), {
        code: 'IMAGE_ERROR_UNSUPPORTED_FORMAT',
        param: 'image_ref1',
      });
    },
  );

  test('when the raw_image image is a GIF, then 400 IMAGE_ERROR_UNSUPPORTED_FORMAT names image', async () => {
    await expectRefused(target, () => sendParts(target, partsOf(change(c0Raw(), {}, { image: gif1x1() }))), {
      code: 'IMAGE_ERROR_UNSUPPORTED_FORMAT',
      param: 'image',
    });
  });

  test('when image_ref1 is a JPEG 5000 px wide, then 400 INVALID_IMAGE_SIZE names image_ref1', async () => {
    await expectRefused(
      target,
      () => sendParts(target, partsOf(change(c0Meglive(), {}, { image_ref1: jpeg(5000, 8) }))),
      {
        code: 'INVALID_IMAGE_SIZE',
        param: 'image_ref1',
      },
    );
  });

  test('when image_ref2 is a PNG 4097 px tall, then 400 INVALID_IMAGE_SIZE names image_ref2', async () => {
    await expectRefused(
      target,
      () => sendParts(target, partsOf(change(c0Meglive(), {}, { image_ref2: png(4, 4097) }))),
      {
        code: 'INVALID_IMAGE_SIZE',
        param: 'image_ref2',
      },
    );
  });

  test('when image_ref1 is a JPEG exactly 4096 px wide, then it is accepted', async () => {
    await expectAccepted(target, () =>
      sendParts(target, partsOf(change(c0Meglive(), {}, { image_ref1: jpeg(4096, 8) }))),
    );
  });

  test('when image_ref1 is an empty file, then 400 IMAGE_ERROR_UNSUPPORTED_FORMAT names image_ref1', async () => {
    // An empty file is sent and present, so not missing; its bytes are no JPEG, PNG or BMP.
    await expectRefused(
      target,
      () => sendParts(target, partsOf(change(c0Meglive(), {}, { image_ref1: Buffer.alloc(0) }))),
      {
        code: 'IMAGE_ERROR_UNSUPPORTED_FORMAT',
        param: 'image_ref1',
      },
    );
  });

  test('when image_ref1 and image_ref2 are both broken, then the first, image_ref1, is named', async () => {
    await expectRefused(
      target,
      () =>
        sendParts(
          target,
          partsOf(change(c0Meglive(), {}, { image_ref1: gif1x1(), image_ref2: truncated(jpeg(64, 64)) })),
        ),
      {
        code: 'IMAGE_ERROR_UNSUPPORTED_FORMAT',
        param: 'image_ref1',
      },
    );
  });

  test('when image_ref2 arrives before a broken image_ref1 and is broken too, then image_ref1 is still named', async () => {
    const parts: Part[] = [
      { name: 'comparison_type', value: '0' },
      { name: 'liveness_type', value: 'meglive' },
      { name: 'image_ref2', file: textNamedJpg() },
      { name: 'image_ref1', file: truncated(png(64, 64)) },
    ];
    await expectRefused(target, () => sendParts(target, parts), {
      code: 'IMAGE_ERROR_UNSUPPORTED_FORMAT',
      param: 'image_ref1',
    });
  });

  test('when only image_ref2 is broken, then image_ref2 is named', async () => {
    await expectRefused(
      target,
      () => sendParts(target, partsOf(change(c0Meglive(), {}, { image_ref2: truncated(png(64, 64)) }))),
      {
        code: 'IMAGE_ERROR_UNSUPPORTED_FORMAT',
        param: 'image_ref2',
      },
    );
  });
});

describe('policy', () => {
  describe('with POLICY_LIVENESS_TYPES=meglive', () => {
    let strict: TestService;
    beforeAll(async () => {
      strict = await startTestService({ POLICY_LIVENESS_TYPES: 'meglive' });
    });
    afterAll(() => strict.close());

    test('when still is asked for, then 400 BAD_ARGUMENTS names liveness_type', async () => {
      await expectRefused(strict, () => sendParts(strict, partsOf(c1Still())), {
        code: 'BAD_ARGUMENTS',
        param: 'liveness_type',
      });
    });

    test('when raw_image is asked for, then 400 BAD_ARGUMENTS names liveness_type', async () => {
      await expectRefused(strict, () => sendParts(strict, partsOf(c0Raw())), {
        code: 'BAD_ARGUMENTS',
        param: 'liveness_type',
      });
    });

    test('when meglive is asked for, then it is accepted', async () => {
      const received = await expectAccepted(strict, () => sendParts(strict, partsOf(c0Meglive())));
      expect(received.fields.liveness_type).toEqual(['meglive']);
    });
  });

  describe('with POLICY_COMPARISON_TYPES=0', () => {
    let strict: TestService;
    beforeAll(async () => {
      strict = await startTestService({ POLICY_COMPARISON_TYPES: '0' });
    });
    afterAll(() => strict.close());

    test('when comparison_type 1 is asked for, then 400 BAD_ARGUMENTS names comparison_type and the body holds no ID data', async () => {
      const response = await expectRefused(strict, () => sendParts(strict, partsOf(c1Still())), {
        code: 'BAD_ARGUMENTS',
        param: 'comparison_type',
      });
      expect(response.text).not.toContain('11010519491231002X');
      expect(response.text).not.toContain('张三');
    });

    test('when comparison_type 0 is asked for, then it is accepted', async () => {
      await expectAccepted(strict, () => sendParts(strict, partsOf(c0Meglive())));
    });
  });

  describe('with POLICY_SECURITY_LEVEL=4 and POLICY_FORCE_COMPARE=1', () => {
    let strict: TestService;
    beforeAll(async () => {
      strict = await startTestService({ POLICY_SECURITY_LEVEL: '4', POLICY_FORCE_COMPARE: '1' });
    });
    afterAll(() => strict.close());

    test('when a comparison_type 0 request is issued, then the sandbox receives security_level 4 and force_compare 1', async () => {
      const received = await expectAccepted(strict, () => sendParts(strict, partsOf(c0Meglive())));
      expect(received.fields.security_level).toEqual(['4']);
      expect(received.fields.force_compare).toEqual(['1']);
    });

    test('when a comparison_type 1 request is issued, then the sandbox receives security_level 4 and force_compare 1', async () => {
      const received = await expectAccepted(strict, () => sendParts(strict, partsOf(c1Still())));
      expect(received.fields.security_level).toEqual(['4']);
      expect(received.fields.force_compare).toEqual(['1']);
    });
  });
});

describe('what the upstream receives', () => {
  const SUB = 'deadbeefcafe0042';

  test('when a comparison_type 0 meglive request with liveness_timeout and biz_no is issued, then exactly the expected fields and image_ref1 go upstream', async () => {
    const image = jpeg(64, 64);
    const form = change(c0Meglive(), { liveness_timeout: '20', biz_no: 'order-42' }, { image_ref1: image });
    const received = await expectAccepted(target, async () => sendParts(target, partsOf(form), await bearer(SUB)));
    expect(Object.keys(received.fields).sort()).toEqual(
      [
        'biz_no',
        'comparison_type',
        'force_compare',
        'liveness_timeout',
        'liveness_type',
        'security_level',
        'sign',
        'sign_version',
        'uuid',
      ].sort(),
    );
    expect(received.fields).toMatchObject({
      comparison_type: ['0'],
      liveness_type: ['meglive'],
      liveness_timeout: ['20'],
      biz_no: ['order-42'],
      security_level: ['2'],
      force_compare: ['0'],
      sign_version: ['hmac_sha1'],
    });
    expect(received.fields.sign).toEqual([expect.stringMatching(/^\S+$/)]);
    expect(received.fields.uuid).toEqual([expect.stringMatching(/^[0-9a-f]{64}$/)]);
    expect(received.fields.uuid?.[0]).not.toContain(SUB);
    expect(received.files).toEqual({ image_ref1: [image.length] });
  });

  test('when the same user asks twice and another user once, then uuid is stable per user and differs between users', async () => {
    const first = await expectAccepted(target, async () => sendParts(target, partsOf(c0Meglive()), await bearer(SUB)));
    const second = await expectAccepted(target, async () => sendParts(target, partsOf(c0Meglive()), await bearer(SUB)));
    const other = await expectAccepted(target, async () =>
      sendParts(target, partsOf(c0Meglive()), await bearer('deadbeefcafe0043')),
    );
    const [uuid1] = first.fields.uuid ?? [];
    expect(uuid1).toMatch(/^[0-9a-f]{64}$/);
    expect(second.fields.uuid).toEqual([uuid1]);
    expect(other.fields.uuid).toEqual([expect.stringMatching(/^[0-9a-f]{64}$/)]);
    expect(other.fields.uuid).not.toEqual([uuid1]);
    expect(uuid1).not.toContain(SUB);
    expect(other.fields.uuid?.[0]).not.toContain('deadbeefcafe0043');
  });

  test('when a comparison_type 1 request is issued, then exactly its fields go upstream and no uuid', async () => {
    const received = await expectAccepted(target, () => sendParts(target, partsOf(c1Still())));
    expect(Object.keys(received.fields).sort()).toEqual(
      [
        'comparison_type',
        'force_compare',
        'idcard_name',
        'idcard_number',
        'liveness_type',
        'security_level',
        'sign',
        'sign_version',
      ].sort(),
    );
    expect(received.fields).toMatchObject({
      comparison_type: ['1'],
      liveness_type: ['still'],
      idcard_name: ['张三'],
      idcard_number: ['11010519491231002X'],
      security_level: ['2'],
      force_compare: ['0'],
    });
    expect(received.files).toEqual({});
  });
});
