/**
 * Hostile or broken bodies: each gets a quick 4xx problem answer (or, for a body that never completes, a
 * closed connection), nothing reaches the sandbox, and the service keeps serving.
 */
import { createServer, type Server } from 'node:http';
import { type AddressInfo, connect, type Socket } from 'node:net';
import type supertest from 'supertest';
import { jpeg } from './fixtures/images';
import {
  expectProblem,
  expectProblemAnswer,
  postToken,
  signToken,
  startTestService,
  type TestService,
  validForm,
} from './helpers/test-service';

let target: TestService;
let server: Server;
let port: number;

beforeAll(async () => {
  target = await startTestService();
  server = createServer(target.service.app).listen(0, '127.0.0.1');
  await new Promise<void>((resolve) => server.once('listening', () => resolve()));
  port = (server.address() as AddressInfo).port;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  await target.close();
});

const MB = 1024 * 1024;
/** Generous for a loaded 2-core machine; a service that waits for a timeout or hangs takes far longer. */
const QUICK_MS = 3_000;

// ---------------------------------------------------------------------------------------------------------
// Multipart bodies built by hand, so that they can be broken in every way a client can break them.
// ---------------------------------------------------------------------------------------------------------

interface RawPart {
  name: string;
  value: string | Buffer;
  /** Makes the part a file part. */
  filename?: string;
}

const BOUNDARY = '----bad-input-test-boundary-7f3a';

function multipartBody(parts: RawPart[], boundary = BOUNDARY): Buffer {
  const chunks: Buffer[] = [];
  for (const part of parts) {
    const disposition = `form-data; name="${part.name}"${part.filename === undefined ? '' : `; filename="${part.filename}"`}`;
    const type = part.filename === undefined ? '' : 'Content-Type: application/octet-stream\r\n';
    chunks.push(Buffer.from(`--${boundary}\r\nContent-Disposition: ${disposition}\r\n${type}\r\n`, 'latin1'));
    chunks.push(typeof part.value === 'string' ? Buffer.from(part.value, 'utf8') : part.value);
    chunks.push(Buffer.from('\r\n', 'latin1'));
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`, 'latin1'));
  return Buffer.concat(chunks);
}

const validParts = (): RawPart[] => [
  { name: 'comparison_type', value: '0' },
  { name: 'liveness_type', value: 'meglive' },
  { name: 'image_ref1', value: jpeg(64, 64), filename: 'face.jpg' },
];

const multipartType = `multipart/form-data; boundary=${BOUNDARY}`;

async function postRaw(contentType: string | undefined, body: Buffer | string): Promise<supertest.Response> {
  let request = target
    .http()
    .post('/v1/biz-tokens')
    .set('Authorization', `Bearer ${await signToken()}`);
  if (contentType !== undefined) request = request.set('Content-Type', contentType);
  return request.send(body);
}

// ---------------------------------------------------------------------------------------------------------
// A raw socket client: for bodies that stop half-way, lie about their length, or are chunked.
// ---------------------------------------------------------------------------------------------------------

interface RawAnswer {
  /** Undefined when the connection closed before a status line arrived. */
  status: number | undefined;
  headers: Record<string, string>;
  body: string;
}

interface RawExchange {
  socket: Socket;
  /** Resolves with the first complete response, or with what arrived when the connection closed. */
  answer: Promise<RawAnswer>;
  answered: () => boolean;
}

function parseAnswer(data: Buffer): { answer: RawAnswer; complete: boolean } | undefined {
  const headerEnd = data.indexOf('\r\n\r\n');
  if (headerEnd < 0) return undefined;
  const [statusLine = '', ...headerLines] = data.subarray(0, headerEnd).toString('latin1').split('\r\n');
  const headers: Record<string, string> = {};
  for (const line of headerLines) {
    const colon = line.indexOf(':');
    if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  const body = data.subarray(headerEnd + 4);
  const length = headers['content-length'] === undefined ? undefined : Number(headers['content-length']);
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine)?.[1]);
  return {
    answer: { status: Number.isFinite(status) ? status : undefined, headers, body: body.toString('utf8') },
    complete: length !== undefined && body.length >= length,
  };
}

async function openRaw(head: Record<string, string>): Promise<RawExchange> {
  const socket = connect(port, '127.0.0.1');
  socket.on('error', () => undefined); // EPIPE / ECONNRESET once the service stops listening to us
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', () => resolve());
    socket.once('error', reject);
  });
  let done = false;
  const answer = new Promise<RawAnswer>((resolve) => {
    let data = Buffer.alloc(0);
    const finish = (): void => {
      if (done) return;
      done = true;
      resolve(parseAnswer(data)?.answer ?? { status: undefined, headers: {}, body: data.toString('utf8') });
    };
    socket.on('data', (chunk: Buffer) => {
      data = Buffer.concat([data, chunk]);
      if (parseAnswer(data)?.complete === true) finish();
    });
    socket.on('close', finish);
  });
  const lines = [
    `POST /v1/biz-tokens HTTP/1.1`,
    `Host: 127.0.0.1:${port}`,
    `Authorization: Bearer ${await signToken()}`,
  ];
  for (const [name, value] of Object.entries(head)) lines.push(`${name}: ${value}`);
  socket.write(`${lines.join('\r\n')}\r\n\r\n`, 'latin1');
  return { socket, answer, answered: () => done };
}

/** Writes with back-pressure; false once the connection is gone. */
function write(socket: Socket, data: Buffer | string): Promise<boolean> {
  return new Promise((resolve) => {
    if (socket.destroyed || socket.writableEnded) return resolve(false);
    if (socket.write(data)) return resolve(true);
    const onDrain = (): void => {
      socket.off('close', onClose);
      resolve(true);
    };
    const onClose = (): void => {
      socket.off('drain', onDrain);
      resolve(false);
    };
    socket.once('drain', onDrain);
    socket.once('close', onClose);
  });
}

function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Sends a file part of `fileBytes` bytes in chunked transfer encoding (no Content-Length), stopping early
 * when the service has answered; with `finish: false` the body is never completed (the client keeps the
 * request open, as an endless upload would). The same 1 MB chunk is written over and over, so the test itself holds
 * almost no memory.
 */
async function sendChunkedUpload(fileBytes: number, { finish = true, waitMs = 20_000 } = {}): Promise<RawAnswer> {
  const exchange = await openRaw({ 'Content-Type': multipartType, 'Transfer-Encoding': 'chunked' });
  const chunked = (data: Buffer): Buffer[] => [
    Buffer.from(`${data.length.toString(16)}\r\n`, 'latin1'),
    data,
    Buffer.from('\r\n', 'latin1'),
  ];
  const opening = Buffer.from(
    `--${BOUNDARY}\r\nContent-Disposition: form-data; name="comparison_type"\r\n\r\n0\r\n` +
      `--${BOUNDARY}\r\nContent-Disposition: form-data; name="liveness_type"\r\n\r\nmeglive\r\n` +
      `--${BOUNDARY}\r\nContent-Disposition: form-data; name="image_ref1"; filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n`,
    'latin1',
  );
  let open = true;
  for (const piece of chunked(opening)) open &&= await write(exchange.socket, piece);
  for (let sent = 0; open && !exchange.answered() && sent < fileBytes; sent += ONE_MB_CHUNK.length) {
    for (const piece of chunked(ONE_MB_CHUNK)) open &&= await write(exchange.socket, piece);
  }
  if (finish && open && !exchange.answered()) {
    for (const piece of chunked(Buffer.from(`\r\n--${BOUNDARY}--\r\n`, 'latin1'))) await write(exchange.socket, piece);
    await write(exchange.socket, '0\r\n\r\n');
  }
  try {
    return await within(exchange.answer, waitMs, 'chunked upload');
  } finally {
    exchange.socket.destroy();
  }
}
const ONE_MB_CHUNK = Buffer.alloc(MB, 0x5a);

// ---------------------------------------------------------------------------------------------------------
// Shared assertions
// ---------------------------------------------------------------------------------------------------------

interface UpstreamMark {
  length: number;
  last: unknown;
}
const upstreamMark = (): UpstreamMark => ({
  length: target.sandbox.received.length,
  last: target.sandbox.received.at(-1),
});

/** The shared strict problem check, for an answer read off a raw socket. */
function expectRawProblem(answer: RawAnswer, status: number, code: string, param?: string | null): void {
  let body: unknown;
  try {
    body = JSON.parse(answer.body);
  } catch {
    body = answer.body;
  }
  expectProblemAnswer({ status: answer.status, headers: answer.headers, body }, status, code, param);
}

/** Nothing reached the sandbox since `before`, and a valid request right now still succeeds. */
async function expectUnharmed(before: UpstreamMark): Promise<void> {
  expect(upstreamMark()).toEqual(before);
  expect(target.sandbox.received.at(-1)).toBe(before.last);
  const response = await postToken(target, validForm());
  expect({ status: response.status, body: response.body as unknown }).toMatchObject({
    status: 201,
    body: { biz_token: expect.any(String) },
  });
  expect(target.sandbox.received.length).toBeGreaterThan(0);
  expect(target.sandbox.received.at(-1)).not.toBe(before.last);
}

/** Runs `send`, checks it answered within `ms`, and returns its result. */
async function timed<T>(ms: number, send: () => Promise<T>): Promise<T> {
  const started = Date.now();
  const result = await send();
  expect(Date.now() - started).toBeLessThan(ms);
  return result;
}

// ---------------------------------------------------------------------------------------------------------

describe('bodies that are not multipart/form-data', () => {
  test('when the body is JSON, then 415 UNSUPPORTED_MEDIA_TYPE and nothing goes upstream', async () => {
    const before = upstreamMark();
    const response = await timed(QUICK_MS, () =>
      postRaw('application/json', JSON.stringify({ comparison_type: '0', liveness_type: 'meglive' })),
    );
    expectProblem(response, 415, 'UNSUPPORTED_MEDIA_TYPE');
    await expectUnharmed(before);
  });

  test('when the body is urlencoded, then 415 UNSUPPORTED_MEDIA_TYPE and nothing goes upstream', async () => {
    const before = upstreamMark();
    const response = await timed(QUICK_MS, () =>
      postRaw('application/x-www-form-urlencoded', 'comparison_type=0&liveness_type=meglive'),
    );
    expectProblem(response, 415, 'UNSUPPORTED_MEDIA_TYPE');
    await expectUnharmed(before);
  });

  test('when the body is plain text, then 415 UNSUPPORTED_MEDIA_TYPE and nothing goes upstream', async () => {
    const before = upstreamMark();
    const response = await timed(QUICK_MS, () => postRaw('text/plain', 'comparison_type=0'));
    expectProblem(response, 415, 'UNSUPPORTED_MEDIA_TYPE');
    await expectUnharmed(before);
  });

  test('when a multipart body comes without any Content-Type, then 415 UNSUPPORTED_MEDIA_TYPE and nothing goes upstream', async () => {
    const before = upstreamMark();
    const body = multipartBody(validParts());
    const exchange = await openRaw({ 'Content-Length': String(body.length) });
    await write(exchange.socket, body);
    const answer = await timed(QUICK_MS, () => within(exchange.answer, QUICK_MS, 'no content-type'));
    exchange.socket.destroy();
    expectRawProblem(answer, 415, 'UNSUPPORTED_MEDIA_TYPE');
    await expectUnharmed(before);
  });
});

describe('broken multipart', () => {
  test('when the multipart Content-Type has no boundary, then 400 BAD_ARGUMENTS and nothing goes upstream', async () => {
    const before = upstreamMark();
    const response = await timed(QUICK_MS, () => postRaw('multipart/form-data', multipartBody(validParts())));
    expectProblem(response, 400, 'BAD_ARGUMENTS');
    await expectUnharmed(before);
  });

  test('when the body is garbage under a valid boundary header, then 400 BAD_ARGUMENTS and nothing goes upstream', async () => {
    const before = upstreamMark();
    const garbage = Buffer.from(
      'this is not multipart at all\r\n\r\n--nope\r\n\u0000\u0001\u0002 junk junk junk\r\n',
      'latin1',
    );
    const response = await timed(QUICK_MS, () => postRaw(multipartType, garbage));
    expectProblem(response, 400, 'BAD_ARGUMENTS');
    await expectUnharmed(before);
  });

  test('when a part has broken headers, then 400 BAD_ARGUMENTS and nothing goes upstream', async () => {
    const before = upstreamMark();
    const body = Buffer.from(`--${BOUNDARY}\r\nthis header has no colon\r\n\r\n0\r\n--${BOUNDARY}--\r\n`, 'latin1');
    const response = await timed(QUICK_MS, () => postRaw(multipartType, body));
    expectProblem(response, 400, 'BAD_ARGUMENTS');
    await expectUnharmed(before);
  });

  test('when the boundary is quoted in the Content-Type, then the body is read as usual and a token is issued', async () => {
    const response = await postRaw(`multipart/form-data; boundary="${BOUNDARY}"`, multipartBody(validParts()));
    expect(response.status).toBe(201);
  });

  test('when a preamble comes before the first boundary and an epilogue after the last, then both are ignored and a token is issued', async () => {
    const body = Buffer.concat([
      Buffer.from('a preamble no parser reads\r\n', 'latin1'),
      multipartBody(validParts()),
      Buffer.from('an epilogue', 'latin1'),
    ]);
    const response = await postRaw(multipartType, body);
    expect(response.status).toBe(201);
  });

  test('when the boundary has a character RFC 2046 does not allow, then 400 BAD_ARGUMENTS and nothing goes upstream', async () => {
    const before = upstreamMark();
    const response = await postRaw(
      'multipart/form-data; boundary=bad{boundary}',
      multipartBody(validParts(), 'bad{boundary}'),
    );
    expectProblem(response, 400, 'BAD_ARGUMENTS');
    await expectUnharmed(before);
  });

  test('when the body ends without its closing boundary, then 400 BAD_ARGUMENTS and nothing goes upstream', async () => {
    const before = upstreamMark();
    const whole = multipartBody(validParts());
    const response = await postRaw(multipartType, whole.subarray(0, whole.length - `--${BOUNDARY}--\r\n`.length - 2));
    expectProblem(response, 400, 'BAD_ARGUMENTS');
    await expectUnharmed(before);
  });

  test('when a part carries more than 16 KiB of headers, then 400 BAD_ARGUMENTS and nothing goes upstream', async () => {
    const before = upstreamMark();
    const padded = Buffer.from(
      `--${BOUNDARY}\r\nX-Padding: ${'p'.repeat(17 * 1024)}\r\nContent-Disposition: form-data; name="biz_no"\r\n\r\nx\r\n`,
      'latin1',
    );
    const response = await postRaw(multipartType, Buffer.concat([padded, multipartBody(validParts())]));
    expectProblem(response, 400, 'BAD_ARGUMENTS');
    await expectUnharmed(before);
  });

  test('when a text field is sent as a file through filename*, then 400 names it and nothing goes upstream', async () => {
    const before = upstreamMark();
    const field = Buffer.from(
      `--${BOUNDARY}\r\nContent-Disposition: form-data; name="biz_no"; filename*=UTF-8''n.txt\r\n\r\nx\r\n`,
      'latin1',
    );
    const response = await postRaw(multipartType, Buffer.concat([field, multipartBody(validParts())]));
    expectProblem(response, 400, 'BAD_ARGUMENTS', 'biz_no');
    await expectUnharmed(before);
  });

  test('when the body opens with a line break before its first boundary (an empty preamble), then a token is issued', async () => {
    const response = await postRaw(
      multipartType,
      Buffer.concat([Buffer.from('\r\n', 'latin1'), multipartBody(validParts())]),
    );
    expect(response.status).toBe(201);
  });

  test('when a part has no blank line after its headers, then FaceID receives only the reading the service validated', async () => {
    // busboy reads on past the next boundary: the next part's headers join this part's (the first name counts) and its value becomes this part's.
    const boundary = 'a:b';
    const headless = Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="biz_no"\r\n`, 'latin1');
    const parts = [{ name: 'liveness_timeout', value: '30' }, ...validParts()];
    const response = await postRaw(
      `multipart/form-data; boundary="${boundary}"`,
      Buffer.concat([headless, multipartBody(parts, boundary)]),
    );
    expect(response.status).toBe(201);
    const forwarded = target.sandbox.received.at(-1)?.fields ?? {};
    expect(forwarded.biz_no).toEqual(['30']);
    expect(forwarded).not.toHaveProperty('liveness_timeout');
  });

  test("when a part's headers are written unusually (Content-Type first, lower case, no spaces, an unquoted name), then its field is still read", async () => {
    const before = upstreamMark();
    // liveness_timeout must be a number: a 400 naming it shows the part was read under its name.
    const unusual = Buffer.from(
      `--${BOUNDARY}\r\ncontent-type: text/plain\r\ncontent-disposition:form-data;name=liveness_timeout\r\n\r\nsoon\r\n`,
      'latin1',
    );
    const response = await postRaw(multipartType, Buffer.concat([unusual, multipartBody(validParts())]));
    expectProblem(response, 400, 'BAD_ARGUMENTS', 'liveness_timeout');
    await expectUnharmed(before);
  });

  test.each([
    ['empty and quoted', 'name=""', 'a part has no field name'],
    ['65 bytes long and quoted', `name="${'n'.repeat(65)}"`, 'a field name is too long'],
    ['65 bytes long and unquoted', `name=${'n'.repeat(65)}`, 'a field name is too long'],
  ])(
    "when a part's name is %s, then 400 BAD_ARGUMENTS says so and nothing goes upstream",
    async (_what, parameter, detail) => {
      const before = upstreamMark();
      const part = Buffer.from(`--${BOUNDARY}\r\nContent-Disposition: form-data; ${parameter}\r\n\r\nx\r\n`, 'latin1');
      const response = await postRaw(multipartType, Buffer.concat([part, multipartBody(validParts())]));
      expectProblem(response, 400, 'BAD_ARGUMENTS');
      expect((response.body as { detail?: string }).detail).toContain(detail);
      await expectUnharmed(before);
    },
  );

  /**
   * Part headers that parsers read differently. multer's parser (busboy) skips a part whose Content-Disposition
   * it cannot read and takes the first of a repeated name or Content-Disposition; the service validates that
   * reading and sends FaceID its own encoding of it, so FaceID can never see the other reading.
   */
  test.each([
    ['an unreadable Content-Disposition (name= with no value)', 'Content-Disposition: form-data; name=\r\n', undefined],
    ['two name parameters', 'Content-Disposition: form-data; name="biz_no"; name="liveness_timeout"\r\n', 'biz_no'],
    [
      'two Content-Disposition headers',
      'Content-Disposition: form-data; name="biz_no"\r\nContent-Disposition: form-data; name="liveness_timeout"\r\n',
      'biz_no',
    ],
  ])(
    'when a part has %s, then FaceID receives only the reading the service validated',
    async (_what, headers, readAs) => {
      const part = Buffer.from(`--${BOUNDARY}\r\n${headers}\r\n30\r\n`, 'latin1');
      const response = await postRaw(multipartType, Buffer.concat([part, multipartBody(validParts())]));
      expect(response.status).toBe(201);
      const forwarded = target.sandbox.received.at(-1)?.fields ?? {};
      expect(forwarded).not.toHaveProperty('liveness_timeout');
      if (readAs === undefined) expect(forwarded).not.toHaveProperty('biz_no');
      else expect(forwarded[readAs]).toEqual(['30']);
    },
  );

  test('when a boundary line carries a megabyte of padding, then the part behind it is not read: 400 MISSING_ARGUMENTS and nothing goes upstream', async () => {
    const before = upstreamMark();
    const body = multipartBody(validParts());
    const opening = `--${BOUNDARY}`.length;
    const padded = Buffer.concat([body.subarray(0, opening), Buffer.alloc(MB, 0x20), body.subarray(opening)]);
    const response = await timed(QUICK_MS, () => postRaw(multipartType, padded));
    expectProblem(response, 400, 'MISSING_ARGUMENTS', 'comparison_type');
    await expectUnharmed(before);
  });

  test('when the body stops half-way and the client half-closes, then the service answers 4xx or closes, and keeps serving', async () => {
    const before = upstreamMark();
    const body = multipartBody(validParts());
    const exchange = await openRaw({ 'Content-Type': multipartType, 'Content-Length': String(body.length) });
    await write(exchange.socket, body.subarray(0, Math.floor(body.length / 2)));
    exchange.socket.end();
    const answer = await timed(QUICK_MS, () => within(exchange.answer, QUICK_MS, 'half body, then FIN'));
    exchange.socket.destroy();
    if (answer.status !== undefined) {
      expect(answer.status).toBeGreaterThanOrEqual(400);
      expect(answer.status).toBeLessThan(500);
    }
    await expectUnharmed(before);
  });

  test('when the body stops half-way and the client vanishes, then nothing goes upstream and the service keeps serving', async () => {
    const before = upstreamMark();
    const body = multipartBody(validParts());
    const exchange = await openRaw({ 'Content-Type': multipartType, 'Content-Length': String(body.length) });
    await write(exchange.socket, body.subarray(0, Math.floor(body.length / 2)));
    await new Promise((resolve) => setTimeout(resolve, 50));
    exchange.socket.destroy();
    await new Promise((resolve) => setTimeout(resolve, 100));
    await expectUnharmed(before);
  });

  test('when 10,000 fields are sent, then 400 BAD_ARGUMENTS quickly and nothing goes upstream', async () => {
    const before = upstreamMark();
    const parts: RawPart[] = [...validParts()];
    for (let index = 0; index < 10_000; index += 1) parts.push({ name: `f${index}`, value: 'x' });
    const response = await timed(QUICK_MS, () => postRaw(multipartType, multipartBody(parts)));
    expectProblem(response, 400, 'BAD_ARGUMENTS');
    await expectUnharmed(before);
  });

  test('when 10,000 repeats of a known field are sent, then 400 BAD_ARGUMENTS quickly and nothing goes upstream', async () => {
    const before = upstreamMark();
    const parts: RawPart[] = [...validParts()];
    for (let index = 0; index < 10_000; index += 1) parts.push({ name: 'biz_no', value: `n${index}` });
    const response = await timed(QUICK_MS, () => postRaw(multipartType, multipartBody(parts)));
    expectProblem(response, 400, 'BAD_ARGUMENTS');
    await expectUnharmed(before);
  });
});

describe('oversized bodies', () => {
  test('when Content-Length announces 30 MB, then 413 PAYLOAD_TOO_LARGE arrives before the body is sent', async () => {
    const before = upstreamMark();
    const announced = 30 * MB;
    const exchange = await openRaw({ 'Content-Type': multipartType, 'Content-Length': String(announced) });
    // Only the first 64 KB: if the service waited for the whole body it would never answer.
    await write(exchange.socket, multipartBody(validParts()).subarray(0, 2_000));
    await write(exchange.socket, Buffer.alloc(64 * 1024, 0x5a));
    const answer = await timed(QUICK_MS, () => within(exchange.answer, QUICK_MS, '30 MB announced'));
    exchange.socket.destroy();
    expectRawProblem(answer, 413, 'PAYLOAD_TOO_LARGE');
    await expectUnharmed(before);
  });

  test('when a 30 MB body is sent whole with its Content-Length, then 413 PAYLOAD_TOO_LARGE', async () => {
    const before = upstreamMark();
    const opening = Buffer.from(
      `--${BOUNDARY}\r\nContent-Disposition: form-data; name="comparison_type"\r\n\r\n0\r\n` +
        `--${BOUNDARY}\r\nContent-Disposition: form-data; name="liveness_type"\r\n\r\nmeglive\r\n` +
        `--${BOUNDARY}\r\nContent-Disposition: form-data; name="image_ref1"; filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n`,
      'latin1',
    );
    const closing = Buffer.from(`\r\n--${BOUNDARY}--\r\n`, 'latin1');
    const exchange = await openRaw({
      'Content-Type': multipartType,
      'Content-Length': String(opening.length + 30 * MB + closing.length),
    });
    let open = await write(exchange.socket, opening);
    for (let sent = 0; open && !exchange.answered() && sent < 30 * MB; sent += MB)
      open = await write(exchange.socket, ONE_MB_CHUNK);
    if (open && !exchange.answered()) await write(exchange.socket, closing);
    const answer = await within(exchange.answer, 10_000, '30 MB sent whole');
    exchange.socket.destroy();
    expectRawProblem(answer, 413, 'PAYLOAD_TOO_LARGE');
    await expectUnharmed(before);
  });

  test('when a 30 MB file is sent chunked without Content-Length, then 413 PAYLOAD_TOO_LARGE', async () => {
    const before = upstreamMark();
    const answer = await timed(10_000, () => sendChunkedUpload(30 * MB));
    expectRawProblem(answer, 413, 'PAYLOAD_TOO_LARGE');
    await expectUnharmed(before);
  });

  test('when a chunked upload passes 20 MB and the client never finishes it, then 413 PAYLOAD_TOO_LARGE arrives anyway', async () => {
    const before = upstreamMark();
    // 60 MB, then silence: the refusal must not wait for an end of body that never comes.
    const answer = await sendChunkedUpload(60 * MB, { finish: false, waitMs: QUICK_MS });
    expectRawProblem(answer, 413, 'PAYLOAD_TOO_LARGE');
    await expectUnharmed(before);
  }, 30_000);

  test('when five 30 MB uploads are sent one after another, then the process grows by less than 100 MB', async () => {
    const before = upstreamMark();
    const rssBefore = process.memoryUsage().rss;
    // Sampled during the uploads too, so memory held only while a request is in flight counts.
    let peak = rssBefore;
    const sample = (): void => {
      peak = Math.max(peak, process.memoryUsage().rss);
    };
    const sampler = setInterval(sample, 10);
    try {
      for (let round = 0; round < 5; round += 1) {
        const answer = await sendChunkedUpload(30 * MB);
        expect(answer.status).toBe(413);
        sample();
      }
    } finally {
      clearInterval(sampler);
    }
    sample();
    expect((peak - rssBefore) / MB).toBeLessThan(100);
    await expectUnharmed(before);
  }, 60_000);
});

describe('malformed values and shapes', () => {
  test('when idcard_name is not valid UTF-8 (bytes ff fe), then 400 BAD_ARGUMENTS names idcard_name and nothing goes upstream', async () => {
    const before = upstreamMark();
    const body = multipartBody([
      { name: 'comparison_type', value: '1' },
      { name: 'liveness_type', value: 'still' },
      { name: 'idcard_name', value: Buffer.concat([Buffer.from('张', 'utf8'), Buffer.from([0xff, 0xfe])]) },
      { name: 'idcard_number', value: '11010519491231002X' },
    ]);
    const response = await timed(QUICK_MS, () => postRaw(multipartType, body));
    expectProblem(response, 400, 'BAD_ARGUMENTS', 'idcard_name');
    expect(response.text).not.toContain('11010519491231002X');
    await expectUnharmed(before);
  });

  test('when a valid UTF-8 idcard_name is built by hand, then it is accepted (the builder is sound)', async () => {
    const body = multipartBody([
      { name: 'comparison_type', value: '1' },
      { name: 'liveness_type', value: 'still' },
      { name: 'idcard_name', value: Buffer.from('张三', 'utf8') },
      { name: 'idcard_number', value: '11010519491231002X' },
    ]);
    const response = await postRaw(multipartType, body);
    expect(response.status).toBe(201);
    expect(target.sandbox.received.at(-1)?.fields.idcard_name).toEqual(['张三']);
  });

  test('when a field name has brackets (liveness_type[0]), then 400 BAD_ARGUMENTS names it and nothing goes upstream', async () => {
    const before = upstreamMark();
    const body = multipartBody([
      { name: 'comparison_type', value: '0' },
      { name: 'liveness_type[0]', value: 'meglive' },
      { name: 'image_ref1', value: jpeg(64, 64), filename: 'face.jpg' },
    ]);
    const response = await timed(QUICK_MS, () => postRaw(multipartType, body));
    expectProblem(response, 400, 'BAD_ARGUMENTS', 'liveness_type[0]');
    await expectUnharmed(before);
  });

  test('when a field name is liveness_type[] next to liveness_type, then 400 BAD_ARGUMENTS and nothing goes upstream', async () => {
    const before = upstreamMark();
    const body = multipartBody([...validParts(), { name: 'liveness_type[]', value: 'still' }]);
    const response = await timed(QUICK_MS, () => postRaw(multipartType, body));
    expectProblem(response, 400, 'BAD_ARGUMENTS', 'liveness_type[]');
    await expectUnharmed(before);
  });

  test('when a file field name has brackets (image_ref1[]), then 400 BAD_ARGUMENTS names it and nothing goes upstream', async () => {
    const before = upstreamMark();
    const body = multipartBody([
      { name: 'comparison_type', value: '0' },
      { name: 'liveness_type', value: 'meglive' },
      { name: 'image_ref1[]', value: jpeg(64, 64), filename: 'face.jpg' },
    ]);
    const response = await timed(QUICK_MS, () => postRaw(multipartType, body));
    expectProblem(response, 400, 'BAD_ARGUMENTS', 'image_ref1[]');
    await expectUnharmed(before);
  });

  test('when a field name is __proto__, then 400 BAD_ARGUMENTS and nothing goes upstream', async () => {
    const before = upstreamMark();
    const body = multipartBody([...validParts(), { name: '__proto__', value: 'x' }]);
    const response = await timed(QUICK_MS, () => postRaw(multipartType, body));
    expectProblem(response, 400, 'BAD_ARGUMENTS');
    await expectUnharmed(before);
  });

  test('when biz_no is a 2 KB value, then 400 BAD_ARGUMENTS names biz_no and nothing goes upstream', async () => {
    const before = upstreamMark();
    const body = multipartBody([...validParts(), { name: 'biz_no', value: 'b'.repeat(2048) }]);
    const response = await timed(QUICK_MS, () => postRaw(multipartType, body));
    expectProblem(response, 400, 'BAD_ARGUMENTS', 'biz_no');
    await expectUnharmed(before);
  });

  test('when an unknown field carries a 2 KB value, then 400 BAD_ARGUMENTS and nothing goes upstream', async () => {
    const before = upstreamMark();
    const body = multipartBody([...validParts(), { name: 'notes', value: 'n'.repeat(2048) }]);
    const response = await timed(QUICK_MS, () => postRaw(multipartType, body));
    expectProblem(response, 400, 'BAD_ARGUMENTS', 'notes');
    await expectUnharmed(before);
  });

  test('when a 10 MB upload opens with a file under a name the endpoint does not take, then 400 names it before the rest is sent', async () => {
    const before = upstreamMark();
    const opening = Buffer.from(
      `--${BOUNDARY}\r\nContent-Disposition: form-data; name="notes"; filename="notes.jpg"\r\nContent-Type: image/jpeg\r\n\r\n`,
      'latin1',
    );
    const exchange = await openRaw({
      'Content-Type': multipartType,
      'Content-Length': String(opening.length + 10 * MB),
    });
    // Only the opening and 64 KB: if the service waited for the whole body it would never answer.
    await write(exchange.socket, opening);
    await write(exchange.socket, Buffer.alloc(64 * 1024, 0x5a));
    const answer = await timed(QUICK_MS, () => within(exchange.answer, QUICK_MS, 'unknown file first'));
    exchange.socket.destroy();
    expectRawProblem(answer, 400, 'BAD_ARGUMENTS', 'notes');
    await expectUnharmed(before);
  });

  test('when more than 3 files are sent, then 400 BAD_ARGUMENTS and nothing goes upstream', async () => {
    const before = upstreamMark();
    const body = multipartBody([
      { name: 'comparison_type', value: '0' },
      { name: 'liveness_type', value: 'raw_image' },
      { name: 'image_ref1', value: jpeg(64, 64), filename: '1.jpg' },
      { name: 'image_ref2', value: jpeg(64, 64), filename: '2.jpg' },
      { name: 'image', value: jpeg(64, 64), filename: '3.jpg' },
      { name: 'image_ref2', value: jpeg(64, 64), filename: '4.jpg' },
      { name: 'image_ref1', value: jpeg(64, 64), filename: '5.jpg' },
    ]);
    const response = await timed(QUICK_MS, () => postRaw(multipartType, body));
    expectProblem(response, 400, 'BAD_ARGUMENTS');
    await expectUnharmed(before);
  });

  test('when 40 tiny files are sent, then 400 BAD_ARGUMENTS quickly and nothing goes upstream', async () => {
    const before = upstreamMark();
    const parts: RawPart[] = [
      { name: 'comparison_type', value: '0' },
      { name: 'liveness_type', value: 'meglive' },
    ];
    for (let index = 0; index < 40; index += 1)
      parts.push({ name: 'image_ref1', value: Buffer.from([index]), filename: `${index}.jpg` });
    const response = await timed(QUICK_MS, () => postRaw(multipartType, multipartBody(parts)));
    expectProblem(response, 400, 'BAD_ARGUMENTS');
    await expectUnharmed(before);
  });
});
