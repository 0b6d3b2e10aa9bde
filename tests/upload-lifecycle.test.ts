/**
 * The life of an upload as an outsider can end it: closed (FIN) or reset (RST) at every stage, a chunked
 * body broken half-way, duplicated headers that parsers read differently, a body exactly at the size limit
 * and one byte over it, and a client that leaves before its answer. Whatever happens, the upload memory
 * budget returns to 0, nothing the service refuses reaches FaceID, and the log line says what really
 * happened. Raw sockets (node:net) against `http.createServer(target.service.app)` on 127.0.0.1.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { type AddressInfo, connect, type Socket } from 'node:net';
import { exportJWK, generateKeyPair, type JWK, SignJWT } from 'jose';
import { MAX_REQUEST_BYTES } from '../src/faceid/parameters';
import { bmp, jpeg } from './fixtures/images';
import {
  expectProblemAnswer,
  postToken,
  signToken,
  startTestService,
  type TestService,
  type TokenForm,
  validForm,
} from './helpers/test-service';

const MiB = 1024 * 1024;
/** The smallest budget the config accepts (MAX_REQUEST_BYTES rounded up to whole MiB): one large upload fills it. */
const BUDGET_MiB = 20;
const BUDGET_BYTES = BUDGET_MiB * MiB;
/** A leaked reservation makes the probe wait this long, then answer 503: slow and wrong, so it cannot pass. */
const UPLOAD_QUEUE_TIMEOUT_MS = 2_000;
const BUDGET_ENV = { UPLOAD_MEMORY_MB: String(BUDGET_MiB), UPLOAD_QUEUE_TIMEOUT_MS: String(UPLOAD_QUEUE_TIMEOUT_MS) };
/** "At once": far under the upload queue timeout, generous for a loaded 2-core machine. */
const AT_ONCE_MS = 1_500;
/** What the abandoned uploads announce: 12 MiB, so that one left behind does not leave room for the probe. */
const ANNOUNCED = 12 * MiB;
/**
 * The probe: a valid request whose upload is 9 MiB. It fits the 20 MiB budget only when no reservation of
 * 12 MiB (or the chunked maximum) is left behind; a leak shows as a 503 after the queue timeout.
 */
const PROBE_BYTES = 9 * MiB;

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------------------------
// Services, each listening on its own loopback port; everything opened is closed after each test.
// ---------------------------------------------------------------------------------------------------------

const closers: Array<() => Promise<unknown> | unknown> = [];
const sockets = new Set<Socket>();
afterEach(async () => {
  for (const socket of sockets) socket.destroy();
  sockets.clear();
  for (const close of closers.splice(0).reverse()) await close();
});

interface Listening {
  target: TestService;
  port: number;
}

async function listen(target: TestService): Promise<number> {
  const server: Server = createServer(target.service.app);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  closers.push(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return (server.address() as AddressInfo).port;
}

/** A fresh service (fresh budget, fresh JWKS cache) per test, so that one leak cannot fail the next test. */
async function startListening(env: Record<string, string | undefined>): Promise<Listening> {
  const target = await startTestService(env);
  closers.push(target.close);
  return { target, port: await listen(target) };
}

// ---------------------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client: headers as a list (so that one can be sent twice), bodies written by hand.
// ---------------------------------------------------------------------------------------------------------

type Header = readonly [name: string, value: string];

interface RawAnswer {
  /** Undefined when the connection closed before a status line arrived. */
  status: number | undefined;
  headers: Record<string, string>;
  body: string;
}

interface RawExchange {
  socket: Socket;
  /** The first complete response, or what had arrived when the connection closed. */
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

async function openRaw(port: number, headers: readonly Header[]): Promise<RawExchange> {
  const socket = connect(port, '127.0.0.1');
  sockets.add(socket);
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
    'POST /v1/biz-tokens HTTP/1.1',
    `Host: 127.0.0.1:${port}`,
    ...headers.map(([name, value]) => `${name}: ${value}`),
  ];
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

/** Writes a large buffer in 1 MiB views (no copies), stopping once the service has answered. */
async function writeLarge(exchange: RawExchange, data: Buffer): Promise<boolean> {
  for (let offset = 0; offset < data.length; offset += MiB) {
    if (exchange.answered() || !(await write(exchange.socket, data.subarray(offset, offset + MiB)))) return false;
  }
  return true;
}

function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** One chunk of a chunked body. */
const chunk = (data: Buffer | string): Buffer => {
  const bytes = typeof data === 'string' ? Buffer.from(data, 'latin1') : data;
  return Buffer.concat([
    Buffer.from(`${bytes.length.toString(16)}\r\n`, 'latin1'),
    bytes,
    Buffer.from('\r\n', 'latin1'),
  ]);
};

const bearer = (token: string): Header => ['Authorization', `Bearer ${token}`];

// ---------------------------------------------------------------------------------------------------------
// Multipart bodies written by hand.
// ---------------------------------------------------------------------------------------------------------

const BOUNDARY = 'lifecycle-7d1e';
const MULTIPART = `multipart/form-data; boundary=${BOUNDARY}`;

interface RawPart {
  /** The whole Content-Disposition parameter list after `form-data`, e.g. `name="biz_no"`. */
  disposition: string;
  value: string | Buffer;
}
const field = (name: string, value: string): RawPart => ({ disposition: `name="${name}"`, value });
const file = (name: string, value: Buffer): RawPart => ({
  disposition: `name="${name}"; filename="${name}.jpg"`,
  value,
});

function multipartBody(parts: readonly RawPart[], boundary = BOUNDARY): Buffer {
  const pieces: Buffer[] = [];
  for (const part of parts) {
    pieces.push(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; ${part.disposition}\r\n\r\n`, 'latin1'));
    pieces.push(typeof part.value === 'string' ? Buffer.from(part.value, 'utf8') : part.value);
    pieces.push(Buffer.from('\r\n', 'latin1'));
  }
  pieces.push(Buffer.from(`--${boundary}--\r\n`, 'latin1'));
  return Buffer.concat(pieces);
}

const validParts = (): RawPart[] => [
  field('comparison_type', '0'),
  field('liveness_type', 'meglive'),
  file('image_ref1', jpeg(64, 64)),
];

/** The start of an upload whose photo is still arriving: two fields, a file part's headers and 64 KiB of it. */
const uploadOpening = (fileName = 'image_ref1'): Buffer =>
  Buffer.concat([
    Buffer.from(
      `--${BOUNDARY}\r\nContent-Disposition: form-data; name="comparison_type"\r\n\r\n0\r\n` +
        `--${BOUNDARY}\r\nContent-Disposition: form-data; name="liveness_type"\r\n\r\nmeglive\r\n` +
        `--${BOUNDARY}\r\nContent-Disposition: form-data; name="${fileName}"; filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n`,
      'latin1',
    ),
    Buffer.alloc(64 * 1024, 0x5a),
  ]);

// ---------------------------------------------------------------------------------------------------------
// What is checked after every way of ending.
// ---------------------------------------------------------------------------------------------------------

async function reservedBytes(target: TestService): Promise<number> {
  const text = (await target.http().get('/metrics')).text;
  const value = /^upload_memory_reserved_bytes (\d+)$/m.exec(text)?.[1];
  if (value === undefined) throw new Error('GET /metrics has no upload_memory_reserved_bytes');
  return Number(value);
}

/** Polls the metric until it shows `expected` (at most `ms`), and returns the last value seen. */
async function reservedReaches(target: TestService, expected: number, ms = 1_000): Promise<number> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await reservedBytes(target);
    if (value === expected || Date.now() >= deadline) return value;
    await sleep(20);
  }
}

let probeImage: Buffer | undefined;
/** A JPEG followed by padding (trailing bytes after EOI are accepted), 9 MiB in all. */
function probeForm(): Required<TokenForm> {
  const form = validForm();
  if (probeImage === undefined) {
    const image = jpeg(64, 64);
    probeImage = Buffer.concat([image, Buffer.alloc(PROBE_BYTES - image.length)]);
  }
  form.files.image_ref1 = probeImage;
  return form;
}

/**
 * Nothing is reserved any more (within 1 s), and a valid 9 MiB upload gets 201 at once: with any 12 MiB
 * reservation left behind it would wait UPLOAD_QUEUE_TIMEOUT_MS and get 503.
 */
async function expectBudgetFree(target: TestService, authorization?: string): Promise<void> {
  expect(await reservedReaches(target, 0)).toBe(0);
  const before = target.sandbox.received.length;
  const started = Date.now();
  const response = await postToken(
    target,
    probeForm(),
    authorization === undefined ? {} : { Authorization: authorization },
  );
  const elapsed = Date.now() - started;
  expect({
    status: response.status,
    body: response.body as unknown,
    elapsed: elapsed < AT_ONCE_MS ? 'at once' : `${elapsed} ms`,
  }).toMatchObject({
    status: 201,
    body: { biz_token: expect.any(String) },
    elapsed: 'at once',
  });
  expect(target.sandbox.received.length).toBe(before + 1);
  expect(await reservedReaches(target, 0)).toBe(0);
}

type Ending = 'FIN' | 'RST';

/** FIN: the client closes its side (socket.end()); RST: the connection is reset (SO_LINGER 0). */
function endClient(exchange: RawExchange, ending: Ending): void {
  if (ending === 'FIN') exchange.socket.end();
  else exchange.socket.resetAndDestroy();
}

/** After a FIN the service must end the connection itself, promptly; after a RST there is nothing to wait for. */
async function connectionEnds(exchange: RawExchange, ending: Ending): Promise<void> {
  if (ending === 'FIN') await within(exchange.answer, 1_000, "the connection after the client's FIN");
}

interface UpstreamMark {
  length: number;
  last: unknown;
}
const upstreamMark = (target: TestService): UpstreamMark => ({
  length: target.sandbox.received.length,
  last: target.sandbox.received.at(-1),
});
const expectNothingUpstream = (target: TestService, before: UpstreamMark): void => {
  expect(upstreamMark(target)).toEqual(before);
  expect(target.sandbox.received.at(-1)).toBe(before.last);
};

function expectRawProblem(
  answer: RawAnswer,
  status: number,
  code: string,
  param?: string | null,
): Record<string, unknown> {
  let body: unknown;
  try {
    body = JSON.parse(answer.body);
  } catch {
    body = answer.body;
  }
  return expectProblemAnswer({ status: answer.status, headers: answer.headers, body }, status, code, param);
}

/** The request's one log line (pino-http), found by the X-Request-Id the client sent. */
const requestLines = (target: TestService, requestId: string): Array<Record<string, unknown>> =>
  target.log.lines().filter((line) => 'latency_ms' in line && line.request_id === requestId);

async function requestLine(
  target: TestService,
  requestId: string,
  ms = 1_000,
): Promise<Array<Record<string, unknown>>> {
  const deadline = Date.now() + ms;
  while (requestLines(target, requestId).length === 0 && Date.now() < deadline) await sleep(20);
  return requestLines(target, requestId);
}

const requestIdHeader = (): Header => ['X-Request-Id', `lifecycle-${randomUUID()}`];

// =========================================================================================================
// 1. The upload memory budget never leaks.
// =========================================================================================================

describe('the upload memory budget, however a request ends', () => {
  type Stage =
    | 'before its body (headers only, closed at once)'
    | 'mid-body (12 MiB announced, 64 KiB sent, its reservation held)'
    | 'a chunked body (its maximum reservation held)';

  /** Brings a request to the stage, and checks that it is there. */
  async function enter(stage: Stage, { target, port }: Listening): Promise<RawExchange> {
    const token = await signToken();
    switch (stage) {
      case 'before its body (headers only, closed at once)':
        return openRaw(port, [bearer(token), ['Content-Type', MULTIPART], ['Content-Length', String(ANNOUNCED)]]);
      case 'mid-body (12 MiB announced, 64 KiB sent, its reservation held)': {
        const exchange = await openRaw(port, [
          bearer(token),
          ['Content-Type', MULTIPART],
          ['Content-Length', String(ANNOUNCED)],
        ]);
        await write(exchange.socket, uploadOpening());
        expect(await reservedReaches(target, ANNOUNCED)).toBe(ANNOUNCED);
        return exchange;
      }
      case 'a chunked body (its maximum reservation held)': {
        const exchange = await openRaw(port, [
          bearer(token),
          ['Content-Type', MULTIPART],
          ['Transfer-Encoding', 'chunked'],
        ]);
        await write(exchange.socket, chunk(uploadOpening()));
        expect(await reservedReaches(target, MAX_REQUEST_BYTES)).toBe(MAX_REQUEST_BYTES);
        return exchange;
      }
    }
  }

  test.each<[Stage, Ending]>([
    ['before its body (headers only, closed at once)', 'FIN'],
    ['before its body (headers only, closed at once)', 'RST'],
    ['mid-body (12 MiB announced, 64 KiB sent, its reservation held)', 'FIN'],
    ['mid-body (12 MiB announced, 64 KiB sent, its reservation held)', 'RST'],
    ['a chunked body (its maximum reservation held)', 'FIN'],
    ['a chunked body (its maximum reservation held)', 'RST'],
  ])(
    'when a request is %s and the client ends it with %s, then the reservation returns to 0 and a 9 MiB upload gets 201 at once',
    async (stage, ending) => {
      const listening = await startListening(BUDGET_ENV);
      const before = upstreamMark(listening.target);
      const exchange = await enter(stage, listening);
      endClient(exchange, ending);
      await connectionEnds(exchange, ending);
      // The chain behind authentication has run by now (HS256 is checked in microseconds).
      await sleep(100);
      expectNothingUpstream(listening.target, before);
      await expectBudgetFree(listening.target);
    },
  );

  test.each([
    ['its chunk size line is not hexadecimal (zz)', 'zz\r\n'],
    ['a chunk carries more bytes than its size line says', '5\r\nmore than five bytes\r\n'],
    ['its chunk size overflows 64 bits', `${'f'.repeat(20)}\r\n`],
  ])(
    'when a chunked upload holds its reservation and then %s, then the connection ends at once, the reservation returns to 0 and a 9 MiB upload gets 201 at once',
    async (_what, malformed) => {
      const listening = await startListening(BUDGET_ENV);
      const before = upstreamMark(listening.target);
      const exchange = await enter('a chunked body (its maximum reservation held)', listening);
      await write(exchange.socket, malformed);
      const answer = await within(exchange.answer, 1_000, 'the answer to a malformed chunk');
      // Node's HTTP parser refuses the body itself: a bare 400 and a closed connection, or just the close.
      expect([400, undefined]).toContain(answer.status);
      expectNothingUpstream(listening.target, before);
      await expectBudgetFree(listening.target);
    },
  );

  test("when a chunk size line is not hexadecimal, then Node's HTTP parser answers its bare 400 and the request's one log line says 400 BAD_ARGUMENTS, not that the client left", async () => {
    const listening = await startListening(BUDGET_ENV);
    const exchange = await enter('a chunked body (its maximum reservation held)', listening);
    await write(exchange.socket, 'zz\r\n');
    const answer = await within(exchange.answer, 1_000, 'the answer to a malformed chunk');
    expect(answer.status).toBe(400);
    await expectBudgetFree(listening.target);
    // The first token request's line: expectBudgetFree's own upload writes the next one.
    const lines = listening.target.log.lines().filter((line) => line.route === '/v1/biz-tokens');
    expect(lines[0]).toMatchObject({ res: { statusCode: 400 }, code: 'BAD_ARGUMENTS', msg: 'POST /v1/biz-tokens 400' });
  });

  test.each<Ending>(['FIN', 'RST'])(
    'when an upload waiting in the queue for memory behind a 12 MiB one is ended by its client with %s, then it takes nothing while queued, and once the first one ends too nothing stays reserved and a 9 MiB upload gets 201 at once',
    async (ending) => {
      const { target, port } = await startListening(BUDGET_ENV);
      const token = await signToken();
      const holder = await openRaw(port, [
        bearer(token),
        ['Content-Type', MULTIPART],
        ['Content-Length', String(ANNOUNCED)],
      ]);
      await write(holder.socket, uploadOpening());
      expect(await reservedReaches(target, ANNOUNCED)).toBe(ANNOUNCED);
      const queued = await openRaw(port, [
        bearer(token),
        ['Content-Type', MULTIPART],
        ['Content-Length', String(ANNOUNCED)],
      ]);
      await write(queued.socket, uploadOpening());
      await sleep(150);
      // 12 + 12 MiB do not fit in 20: the second one waits, unread and unreserved.
      expect(await reservedBytes(target)).toBe(ANNOUNCED);
      endClient(queued, ending);
      await sleep(100);
      expect(await reservedBytes(target)).toBe(ANNOUNCED);
      // A FIN behind 64 KiB of unread body is only seen once the body is read: a half-closed client may
      // still be waiting for its answer, so the wait ends when memory frees up (or at the queue timeout).
      endClient(holder, 'RST');
      await within(queued.answer, 1_000, 'the queued request once memory freed up');
      await expectBudgetFree(target);
    },
  );

  test("when one user's two 10 MiB uploads take the whole budget and both clients leave mid-body (one FIN, one RST), then another user's upload gets 201 at once and /readyz stays 200", async () => {
    const { target, port } = await startListening(BUDGET_ENV);
    const userA = await signToken({ sub: 'lifecycle-user-a' });
    const half = BUDGET_BYTES / 2;
    const uploads: RawExchange[] = [];
    for (let index = 0; index < 2; index += 1) {
      const upload = await openRaw(port, [
        bearer(userA),
        ['Content-Type', MULTIPART],
        ['Content-Length', String(half)],
      ]);
      await write(upload.socket, uploadOpening());
      uploads.push(upload);
    }
    expect(await reservedReaches(target, BUDGET_BYTES)).toBe(BUDGET_BYTES);
    expect((await target.http().get('/readyz')).status).toBe(200);
    const [first, second] = uploads as [RawExchange, RawExchange];
    endClient(first, 'FIN');
    endClient(second, 'RST');
    await connectionEnds(first, 'FIN');
    await expectBudgetFree(target, `Bearer ${await signToken({ sub: 'lifecycle-user-b' })}`);
    expect((await target.http().get('/readyz')).status).toBe(200);
  });

  test("when one user's two 10 MiB uploads each open with a file part the endpoint does not take, then both get 400 naming the part before their bodies arrive, their reservations are freed (one client stays, one resets), and another user's upload gets 201 at once", async () => {
    const { target, port } = await startListening(BUDGET_ENV);
    const before = upstreamMark(target);
    const userA = await signToken({ sub: 'lifecycle-user-a' });
    const half = BUDGET_BYTES / 2;
    const opening = uploadOpening('notes');
    const uploads: RawExchange[] = [];
    for (let index = 0; index < 2; index += 1) {
      const upload = await openRaw(port, [
        bearer(userA),
        ['Content-Type', MULTIPART],
        ['Content-Length', String(half)],
      ]);
      await write(upload.socket, opening);
      uploads.push(upload);
    }
    const [stayer, leaver] = uploads as [RawExchange, RawExchange];
    // Neither sends the rest of what it announced: the refusal must not wait for it.
    expectRawProblem(await within(stayer.answer, 3_000, 'the first refused upload'), 400, 'BAD_ARGUMENTS', 'notes');
    expectRawProblem(await within(leaver.answer, 3_000, 'the second refused upload'), 400, 'BAD_ARGUMENTS', 'notes');
    endClient(leaver, 'RST');
    expectNothingUpstream(target, before);
    await expectBudgetFree(target, `Bearer ${await signToken({ sub: 'lifecycle-user-b' })}`);
    expect((await target.http().get('/readyz')).status).toBe(200);
    endClient(stayer, 'FIN');
  });
});

describe('the upload memory budget, when the client leaves while authentication is still pending', () => {
  /** An identity provider whose JWKS answers after 300 ms; jose fetches it on a service's first token. */
  const JWKS_DELAY_MS = 300;
  let jwksServer: Server;
  let jwksUrl: string;
  let jwksRequests = 0;
  let jwksAnswers = 0;
  let privateKey: Awaited<ReturnType<typeof generateKeyPair>>['privateKey'];

  beforeAll(async () => {
    const pair = await generateKeyPair('ES256', { extractable: true });
    privateKey = pair.privateKey;
    const jwk: JWK = { ...(await exportJWK(pair.publicKey)), kid: 'lifecycle-key', alg: 'ES256', use: 'sig' };
    jwksServer = createServer((_req, res) => {
      jwksRequests += 1;
      setTimeout(() => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ keys: [jwk] }));
        jwksAnswers += 1;
      }, JWKS_DELAY_MS);
    });
    await new Promise<void>((resolve) => jwksServer.listen(0, '127.0.0.1', resolve));
    jwksUrl = `http://127.0.0.1:${(jwksServer.address() as AddressInfo).port}/.well-known/jwks.json`;
  });
  afterAll(async () => {
    jwksServer.closeAllConnections();
    await new Promise<void>((resolve) => jwksServer.close(() => resolve()));
  });

  const esToken = (sub: string): Promise<string> =>
    new SignJWT({})
      .setProtectedHeader({ alg: 'ES256', kid: 'lifecycle-key' })
      .setSubject(sub)
      .setIssuedAt()
      .setExpirationTime('5m')
      .sign(privateKey);

  async function until(condition: () => boolean, what: string, ms = 1_000): Promise<void> {
    const deadline = Date.now() + ms;
    while (!condition()) {
      if (Date.now() >= deadline) throw new Error(`${what}: not within ${ms} ms`);
      await sleep(10);
    }
  }

  test.each<Ending>(['FIN', 'RST'])(
    "when a 12 MiB upload's client ends it with %s while its JWT is still being checked, then no reservation outlives it, its log line says 499 CLIENT_CLOSED and a 9 MiB upload gets 201 at once",
    async (ending) => {
      // A fresh service per case: its JWKS cache is empty, so its first token waits for the slow JWKS.
      const { target, port } = await startListening({
        ...BUDGET_ENV,
        AUTH_JWT_SECRET: undefined,
        AUTH_JWKS_URL: jwksUrl,
      });
      const before = upstreamMark(target);
      const [requests, answers] = [jwksRequests, jwksAnswers];
      const id = requestIdHeader();
      const exchange = await openRaw(port, [
        bearer(await esToken('lifecycle-jwks-a')),
        id,
        ['Content-Type', MULTIPART],
        ['Content-Length', String(ANNOUNCED)],
      ]);
      await write(exchange.socket, uploadOpening());
      await until(() => jwksRequests > requests, 'the JWKS fetch');
      // Authentication is pending: nothing may be reserved yet.
      expect(await reservedBytes(target)).toBe(0);
      endClient(exchange, ending);
      await connectionEnds(exchange, ending);
      // The JWKS answers, the JWT is accepted, and the chain runs on for a client that is gone.
      await until(() => jwksAnswers > answers, 'the JWKS answer');
      await sleep(150);
      expectNothingUpstream(target, before);
      await expectBudgetFree(target, `Bearer ${await esToken('lifecycle-jwks-b')}`);
      const lines = await requestLine(target, id[1]);
      expect(
        lines.map((line) => ({
          msg: line.msg,
          status: (line.res as { statusCode?: unknown } | undefined)?.statusCode,
          code: line.code,
        })),
      ).toEqual([{ msg: 'POST /v1/biz-tokens 499', status: 499, code: 'CLIENT_CLOSED' }]);
    },
  );
});

// =========================================================================================================
// 2-6. Headers parsers disagree on, the size limit, name*, and the log line of a client that left.
// =========================================================================================================

describe('one service under attack', () => {
  let target: TestService;
  let port: number;
  beforeAll(async () => {
    target = await startTestService();
  });
  beforeEach(async () => {
    port = await listen(target);
  });
  afterAll(() => target.close());

  /** A whole request over a raw socket, and its answer. */
  async function send(headers: readonly Header[], body: Buffer, ms = 3_000): Promise<RawAnswer> {
    const exchange = await openRaw(port, [...headers, ['Content-Length', String(body.length)]]);
    await write(exchange.socket, body);
    return within(exchange.answer, ms, 'the answer');
  }

  // -------------------------------------------------------------------------------------------------------
  describe('two Authorization headers', () => {
    test.each([
      ["the valid token first, then another user's", 'first'],
      ["another user's token first, then the valid one", 'second'],
    ])(
      'when a request carries two Authorization headers (%s), then 400 BAD_ARGUMENTS names Authorization, no token is issued and nothing reaches FaceID',
      async (_order, validOne) => {
        const before = upstreamMark(target);
        const valid = bearer(await signToken({ sub: 'lifecycle-owner' }));
        const other = bearer(await signToken({ sub: 'lifecycle-intruder' }));
        const authorizations = validOne === 'first' ? [valid, other] : [other, valid];
        const answer = await send([...authorizations, ['Content-Type', MULTIPART]], multipartBody(validParts()));
        const body = expectRawProblem(answer, 400, 'BAD_ARGUMENTS', 'Authorization');
        expect(body).not.toHaveProperty('biz_token');
        expect(answer.body).not.toContain('biz_token');
        expectNothingUpstream(target, before);
        expect(await reservedReaches(target, 0)).toBe(0);
      },
    );
  });

  // -------------------------------------------------------------------------------------------------------
  describe('a body at the size limit', () => {
    /** Short boundary and the fewest part-header bytes, so that the service's re-encoding grows the most. */
    const TIGHT = 'b';
    const head = (name: string): string => `--${TIGHT}\r\nContent-Disposition: form-data; name="${name}"`;
    // Every field a client may send with comparison_type 0 / meglive, each part costing the service more to re-encode.
    const opening = Buffer.from(
      `${head('comparison_type')}\r\n\r\n0\r\n${head('liveness_type')}\r\n\r\nmeglive\r\n${head('biz_no')}\r\n\r\nx\r\n` +
        `${head('liveness_timeout')}\r\n\r\n60\r\n${head('liveness_action_count')}\r\n\r\n3\r\n${head('multi_oriented_detection')}\r\n\r\n1\r\n`,
      'latin1',
    );
    const tinyRef2 = bmp(1, 1);
    const middle = Buffer.concat([
      Buffer.from(`${head('image_ref2')}; filename=f\r\n\r\n`, 'latin1'),
      tinyRef2,
      Buffer.from(`\r\n${head('image_ref1')}; filename=f\r\n\r\n`, 'latin1'),
    ]);
    const closing = Buffer.from(`\r\n--${TIGHT}--`, 'latin1');
    /** The photo's size when the whole body is exactly MAX_REQUEST_BYTES. */
    const photoBytes = MAX_REQUEST_BYTES - opening.length - middle.length - closing.length;

    let photo: Buffer | undefined;
    /**
     * One buffer for both cases: a 32-bit 4096-px-wide BMP whose pixel rows end exactly at `photoBytes`
     * (the pixel offset absorbs the remainder), plus one spare byte after it (bytes after a BMP's pixel
     * array are accepted). Pixel data is zeros: it is never decoded.
     */
    function photoOf(bytes: number): Buffer {
      if (photo === undefined) {
        const width = 4096;
        const rowStride = width * 4;
        const height = Math.floor((photoBytes - 54) / rowStride);
        photo = Buffer.alloc(photoBytes + 1);
        photo.write('BM', 0, 'latin1');
        photo.writeUInt32LE(photoBytes, 2);
        photo.writeUInt32LE(photoBytes - rowStride * height, 10);
        photo.writeUInt32LE(40, 14);
        photo.writeInt32LE(width, 18);
        photo.writeInt32LE(height, 22);
        photo.writeUInt16LE(1, 26);
        photo.writeUInt16LE(32, 28);
        photo.writeUInt32LE(0, 30);
        photo.writeUInt32LE(rowStride * height, 34);
      }
      return photo.subarray(0, bytes);
    }

    async function upload(extra: 0 | 1, framing: 'Content-Length' | 'chunked'): Promise<RawAnswer> {
      const image = photoOf(photoBytes + extra);
      const total = opening.length + middle.length + image.length + closing.length;
      expect(total).toBe(MAX_REQUEST_BYTES + extra);
      const exchange = await openRaw(port, [
        bearer(await signToken()),
        ['Content-Type', `multipart/form-data; boundary=${TIGHT}`],
        framing === 'chunked' ? ['Transfer-Encoding', 'chunked'] : ['Content-Length', String(total)],
      ]);
      if (framing === 'Content-Length') {
        if (await write(exchange.socket, Buffer.concat([opening, middle]))) {
          if (await writeLarge(exchange, image)) await write(exchange.socket, closing);
        }
      } else {
        let open = await write(exchange.socket, chunk(Buffer.concat([opening, middle])));
        for (let offset = 0; open && !exchange.answered() && offset < image.length; offset += MiB) {
          const piece = image.subarray(offset, offset + MiB);
          open =
            (await write(exchange.socket, `${piece.length.toString(16)}\r\n`)) &&
            (await write(exchange.socket, piece)) &&
            (await write(exchange.socket, '\r\n'));
        }
        if (open && !exchange.answered())
          await write(exchange.socket, Buffer.concat([chunk(closing), Buffer.from('0\r\n\r\n', 'latin1')]));
      }
      return within(exchange.answer, 15_000, `a ${total}-byte upload`);
    }

    test.each<'Content-Length' | 'chunked'>(['Content-Length', 'chunked'])(
      'when a body of exactly MAX_REQUEST_BYTES carries a valid photo (sent with %s), then 201 and FaceID receives the photo whole, within its own 20 MiB',
      async (framing) => {
        const before = target.sandbox.received.length;
        const answer = await upload(0, framing);
        expect({ status: answer.status, body: answer.body.slice(0, 300) }).toMatchObject({ status: 201 });
        expect(JSON.parse(answer.body)).toMatchObject({ biz_token: expect.any(String) });
        expect(target.sandbox.received.length).toBe(before + 1);
        expect(target.sandbox.received.at(-1)).toMatchObject({
          files: { image_ref1: [photoBytes], image_ref2: [tinyRef2.length] },
          fields: {
            biz_no: ['x'],
            liveness_timeout: ['60'],
            liveness_action_count: ['3'],
            multi_oriented_detection: ['1'],
          },
        });
        expect(await reservedReaches(target, 0)).toBe(0);
      },
      30_000,
    );

    test.each<'Content-Length' | 'chunked'>(['Content-Length', 'chunked'])(
      'when the same body is one byte longer (sent with %s), then 413 PAYLOAD_TOO_LARGE and nothing reaches FaceID',
      async (framing) => {
        const before = upstreamMark(target);
        const answer = await upload(1, framing);
        expectRawProblem(answer, 413, 'PAYLOAD_TOO_LARGE');
        expectNothingUpstream(target, before);
        expect(await reservedReaches(target, 0)).toBe(0);
      },
      30_000,
    );
  });

  // -------------------------------------------------------------------------------------------------------
  describe('Content-Type that parsers read differently', () => {
    test.each([
      `multipart/form-data; boundary=${BOUNDARY}; boundary=other`,
      `multipart/form-data; boundary="${BOUNDARY}"; boundary=other`,
      `multipart/form-data; boundary=other; BOUNDARY=${BOUNDARY}`,
      `multipart/form-data; boundary=${BOUNDARY}; boundary=${BOUNDARY}`,
    ])(
      'when the Content-Type names two boundaries (%s), then 400 BAD_ARGUMENTS and nothing reaches FaceID',
      async (contentType) => {
        const before = upstreamMark(target);
        const answer = await send(
          [bearer(await signToken()), ['Content-Type', contentType]],
          multipartBody(validParts()),
        );
        expectRawProblem(answer, 400, 'BAD_ARGUMENTS');
        expectNothingUpstream(target, before);
      },
    );

    test.each([
      ['multipart, then text/plain', [MULTIPART, 'text/plain']],
      ['text/plain, then multipart', ['text/plain', MULTIPART]],
      ['multipart with two different boundaries', [MULTIPART, 'multipart/form-data; boundary=other']],
      ['the same multipart twice', [MULTIPART, MULTIPART]],
    ])(
      'when a request carries two Content-Type headers (%s), then 400 BAD_ARGUMENTS names Content-Type and nothing reaches FaceID',
      async (_what, types) => {
        const before = upstreamMark(target);
        const answer = await send(
          [bearer(await signToken()), ...types.map((type): Header => ['Content-Type', type])],
          multipartBody(validParts()),
        );
        expectRawProblem(answer, 400, 'BAD_ARGUMENTS', 'Content-Type');
        expectNothingUpstream(target, before);
      },
    );
  });

  // -------------------------------------------------------------------------------------------------------
  describe("RFC 5987 name* in a part's Content-Disposition", () => {
    test.each([`name="biz_no"; name*=UTF-8''liveness_timeout`, `name*=UTF-8''liveness_timeout; name="biz_no"`])(
      'when a part says %s, then the service reads it as biz_no (name* is ignored) and FaceID receives biz_no and no liveness_timeout',
      async (disposition) => {
        const before = target.sandbox.received.length;
        // '30' is valid under both names, so only the name decides what FaceID gets.
        const answer = await send(
          [bearer(await signToken()), ['Content-Type', MULTIPART]],
          multipartBody([...validParts(), { disposition, value: '30' }]),
        );
        expect({ status: answer.status, body: answer.body.slice(0, 300) }).toMatchObject({ status: 201 });
        expect(target.sandbox.received.length).toBe(before + 1);
        const received = target.sandbox.received.at(-1);
        expect(received?.fields.biz_no).toEqual(['30']);
        expect(received?.fields).not.toHaveProperty('liveness_timeout');
        expect(Object.keys(received?.fields ?? {}).filter((name) => name.includes('*'))).toEqual([]);
      },
    );

    test("when a part names itself only through name*=UTF-8''biz_no, then 400 BAD_ARGUMENTS (the part has no field name) and nothing reaches FaceID", async () => {
      const before = upstreamMark(target);
      const answer = await send(
        [bearer(await signToken()), ['Content-Type', MULTIPART]],
        multipartBody([...validParts(), { disposition: `name*=UTF-8''biz_no`, value: 'lifecycle' }]),
      );
      const body = expectRawProblem(answer, 400, 'BAD_ARGUMENTS');
      expect(body.detail).toBe('a part has no field name');
      expectNothingUpstream(target, before);
    });
  });

  // -------------------------------------------------------------------------------------------------------
  describe('the log line of a client that went away', () => {
    const statusOf = (line: Record<string, unknown>): unknown =>
      (line.res as { statusCode?: unknown } | undefined)?.statusCode;

    test.each<Ending>(['FIN', 'RST'])(
      'when the client ends a valid request with %s while FaceID takes 500 ms, then its one log line says 499 CLIENT_CLOSED, never 200 or 201',
      async (ending) => {
        const before = target.sandbox.received.length;
        const id = requestIdHeader();
        const body = multipartBody([...validParts(), field('biz_no', 'sandbox:latency=500')]);
        const exchange = await openRaw(port, [
          bearer(await signToken()),
          id,
          ['Content-Type', MULTIPART],
          ['Content-Length', String(body.length)],
        ]);
        await write(exchange.socket, body);
        await sleep(100);
        expect(exchange.answered()).toBe(false);
        endClient(exchange, ending);
        // Wait until FaceID has answered the abandoned call and the service has tried to answer it too.
        const deadline = Date.now() + 2_000;
        while (target.sandbox.received.length === before && Date.now() < deadline) await sleep(20);
        expect(target.sandbox.received.length).toBe(before + 1);
        await sleep(650);
        const lines = await requestLine(target, id[1]);
        expect(lines.map((line) => ({ msg: line.msg, status: statusOf(line), code: line.code }))).toEqual([
          { msg: 'POST /v1/biz-tokens 499', status: 499, code: 'CLIENT_CLOSED' },
        ]);
        expect(await reservedReaches(target, 0)).toBe(0);
      },
    );

    test('when the client resets the connection half-way through its body, then its one log line says 499 CLIENT_CLOSED', async () => {
      const id = requestIdHeader();
      const exchange = await openRaw(port, [
        bearer(await signToken()),
        id,
        ['Content-Type', MULTIPART],
        ['Content-Length', String(ANNOUNCED)],
      ]);
      await write(exchange.socket, uploadOpening());
      expect(await reservedReaches(target, ANNOUNCED)).toBe(ANNOUNCED);
      endClient(exchange, 'RST');
      const lines = await requestLine(target, id[1]);
      await sleep(100);
      expect(requestLines(target, id[1])).toHaveLength(lines.length);
      expect(lines.map((line) => ({ msg: line.msg, status: statusOf(line), code: line.code }))).toEqual([
        { msg: 'POST /v1/biz-tokens 499', status: 499, code: 'CLIENT_CLOSED' },
      ]);
      expect(await reservedReaches(target, 0)).toBe(0);
    });
  });
});
