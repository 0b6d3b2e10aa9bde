import { readFileSync } from 'node:fs';
import net, { type AddressInfo, type Socket } from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import supertest from 'supertest';
import { jpeg } from './fixtures/images';
import { startChildService, targetOf, type ChildService } from './helpers/child-service';
import {
  cleanupAfter,
  expectProblem,
  postToken,
  SANDBOX_KEY,
  SANDBOX_SECRET,
  TEST_JWT_SECRET,
  validForm,
  type TestService,
} from './helpers/test-service';

/**
 * The hand-written HTTP/1.1 client to FaceID (answer-reader.ts, upstream-connections.ts), from the outside:
 * POST /v1/biz-tokens against a raw TCP (or TLS) FaceID stand-in that writes each answer byte for byte as
 * scripted, so framing, interim answers, limits, malformed answers and connection reuse are all seen as
 * the service's caller sees them.
 */

const { start, defer } = cleanupAfter(afterEach);

/** How FaceID answers one request: `index` counts the requests this stand-in has received, from 0. */
type Answer = (socket: Socket, index: number) => void;

interface ReceivedRequest {
  /** Which accepted connection carried it, from 0. */
  connection: number;
  head: string;
  /** Empty until the whole body has arrived. */
  body: Buffer;
}

interface ScriptedFaceId {
  url: string;
  /** Every request whose head arrived, in order. */
  requests: ReceivedRequest[];
  /** TCP (or completed TLS) connections accepted so far. */
  connections: () => number;
  /** Per accepted TLS connection: the name the client sent (SNI), and whether it resumed an earlier session. */
  handshakes: Array<{ servername: string | false | null; resumed: boolean }>;
  /** Resolves once the stand-in's end of that connection has closed; rejects after `ms`. */
  closed: (connection: number, ms?: number) => Promise<void>;
  close: () => Promise<void>;
}

interface ScriptOptions {
  /** Speak TLS with this key and certificate. */
  tls?: { key: Buffer; cert: Buffer };
  /**
   * Answer as soon as a request's head arrives, then read nothing for 300 ms: with a large body, the
   * answer is complete while the service is still writing the request.
   */
  early?: boolean;
}

/**
 * A FaceID stand-in on 127.0.0.1 port 0 that reads each request (head up to the empty line, then
 * Content-Length bytes of body) and lets `answers[index]` write the answer once the body is in (or, with
 * `early`, once the head is); requests past the script get its last answer.
 */
async function scriptedFaceId(answers: Answer[], options: ScriptOptions = {}): Promise<ScriptedFaceId> {
  const requests: ReceivedRequest[] = [];
  const sockets: Socket[] = [];
  const handshakes: ScriptedFaceId['handshakes'] = [];
  const closings: Array<Promise<void>> = [];
  const answer = (socket: Socket, index: number): void => (answers[Math.min(index, answers.length - 1)] as Answer)(socket, index);
  const accept = (socket: Socket): void => {
    const connection = sockets.length;
    sockets.push(socket);
    if (socket instanceof tls.TLSSocket) handshakes.push({ servername: socket.servername, resumed: socket.isSessionReused() });
    closings.push(new Promise((resolve) => socket.once('close', () => resolve())));
    // One byte per write must leave as one segment, not wait for Nagle.
    socket.setNoDelay(true);
    // The service may reset a connection it gave up on; that is part of the tests, not an error here.
    socket.on('error', () => undefined);
    let pending = Buffer.alloc(0);
    let current: ReceivedRequest | undefined;
    let bodyBytes = 0;
    socket.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      for (;;) {
        if (current === undefined) {
          const end = pending.indexOf('\r\n\r\n');
          if (end === -1) return;
          current = { connection, head: pending.toString('latin1', 0, end), body: Buffer.alloc(0) };
          requests.push(current);
          bodyBytes = Number(/^content-length: *(\d+)$/im.exec(current.head)?.[1] ?? 0);
          pending = pending.subarray(end + 4);
          if (options.early === true) {
            answer(socket, requests.length - 1);
            socket.pause();
            setTimeout(() => socket.resume(), 300);
          }
        }
        if (pending.length < bodyBytes) return;
        current.body = pending.subarray(0, bodyBytes);
        pending = pending.subarray(bodyBytes);
        current = undefined;
        if (options.early !== true) answer(socket, requests.length - 1);
      }
    });
  };
  const server = options.tls === undefined ? net.createServer(accept) : tls.createServer(options.tls, accept);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `${options.tls === undefined ? 'http' : 'https'}://127.0.0.1:${port}`,
    requests,
    connections: () => sockets.length,
    handshakes,
    closed: (connection, ms = 1_000) => {
      const closing = closings[connection];
      if (closing === undefined) return Promise.reject(new Error(`no connection ${connection}`));
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<never>((_resolve, reject) => {
        timer = setTimeout(() => reject(new Error(`connection ${connection} still open after ${ms} ms`)), ms);
      });
      return Promise.race([closing, late]).finally(() => clearTimeout(timer));
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const socket of sockets) socket.destroy();
      }),
  };
}

/** FaceID's success body. */
const tokenBody = (token: string): string => JSON.stringify({ biz_token: token, request_id: '1,abc', time_used: 1 });

/** A whole answer framed by Content-Length; `headers` are extra lines, each ending in CRLF. */
function lengthAnswer(token: string, { statusLine = 'HTTP/1.1 200 OK', headers = '' } = {}): string {
  const body = tokenBody(token);
  return `${statusLine}\r\nContent-Type: application/json\r\n${headers}Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
}

/** A kept-alive answer whose token names the request: `token-0`, `token-1`... */
const keepAlive: Answer = (socket, index) => void socket.write(lengthAnswer(`token-${index}`));

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Writes `text` one byte per write, yielding between bytes so the service reads them one by one. */
async function writeBytewise(socket: Socket, text: string): Promise<void> {
  for (const byte of Buffer.from(text, 'latin1')) {
    if (socket.destroyed) return;
    socket.write(Buffer.of(byte));
    await tick();
  }
}

/** A token answer of exactly `bodyBytes` bytes of valid JSON: only its size can make it unreadable. */
function paddedTokenBody(token: string, bodyBytes: number): string {
  const bare = JSON.stringify({ biz_token: token, request_id: '1,abc', time_used: 1, padding: '' });
  return JSON.stringify({ biz_token: token, request_id: '1,abc', time_used: 1, padding: 'x'.repeat(bodyBytes - bare.length) });
}

/** The service under test, talking to the stand-in; a short deadline so an answer it waits on fails fast. */
const startAgainst = (faceid: ScriptedFaceId, env: Record<string, string> = {}): Promise<TestService> =>
  start({ FACEID_BASE_URL: faceid.url, FACEID_TIMEOUT_MS: '1500', ...env });

async function scripted(answers: Answer[], options: ScriptOptions = {}): Promise<ScriptedFaceId> {
  const faceid = await scriptedFaceId(answers, options);
  defer(faceid.close);
  return faceid;
}

/** The request's upstream facts from its own log line (written when the answer went out). */
function upstreamOf(target: TestService, response: supertest.Response): Record<string, unknown> {
  const requestId = response.headers['x-request-id'];
  const lines = target.log.lines().filter((line) => line.request_id === requestId && 'latency_ms' in line);
  expect(lines).toHaveLength(1);
  return (lines[0]?.upstream ?? {}) as Record<string, unknown>;
}

/** A new request's 201 carries exactly `bizToken`, got at FaceID's first attempt. */
async function expectTokenAtFirstAttempt(target: TestService, bizToken: string): Promise<void> {
  const response = await postToken(target);
  expectToken(response, bizToken);
  expect(upstreamOf(target, response)).toMatchObject({ attempts: 1 });
}

/** A 201 carrying exactly FaceID's biz_token. */
function expectToken(response: supertest.Response, bizToken: string): void {
  expect({ status: response.status, body: response.body as unknown }).toMatchObject({ status: 201, body: { biz_token: bizToken } });
  expect(typeof (response.body as { expires_at?: unknown }).expires_at).toBe('string');
}

describe('framing: every way FaceID may frame its answer', () => {
  test('when FaceID answers chunked, with a chunk extension and a trailer, one byte per write, then the service answers 201 with its biz_token and keeps the connection', async () => {
    const chunked = (token: string): string => {
      const body = tokenBody(token);
      const [first, second] = [body.slice(0, 10), body.slice(10)];
      return (
        'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n' +
        `${first.length.toString(16)};name="ext value"\r\n${first}\r\n` +
        `${second.length.toString(16).toUpperCase()}\r\n${second}\r\n` +
        '0;last\r\nX-Checksum: abc\r\n\r\n'
      );
    };
    const faceid = await scripted([(socket, index) => void writeBytewise(socket, chunked(`chunked-${index}`))]);
    const target = await startAgainst(faceid);
    await expectTokenAtFirstAttempt(target, 'chunked-0');
    // The trailer was read to its end: nothing is left over, so the connection carries the next request.
    await expectTokenAtFirstAttempt(target, 'chunked-1');
    expect(faceid.requests.map((request) => request.connection)).toEqual([0, 0]);
  });

  test('when FaceID sends 100 Continue, then the head, then the body in separate writes, then the service answers 201 with its biz_token', async () => {
    const faceid = await scripted([
      (socket, index) => {
        const answer = lengthAnswer(`split-${index}`);
        const bodyStart = answer.indexOf('\r\n\r\n') + 4;
        void (async () => {
          socket.write('HTTP/1.1 100 Continue\r\n\r\n');
          await sleep(10);
          socket.write(answer.slice(0, bodyStart));
          await sleep(10);
          socket.write(answer.slice(bodyStart));
        })();
      },
    ]);
    const target = await startAgainst(faceid);
    await expectTokenAtFirstAttempt(target, 'split-0');
    // The interim answer did not shift the framing: the connection is still in step for a second request.
    await expectTokenAtFirstAttempt(target, 'split-1');
    expect(faceid.requests.map((request) => request.connection)).toEqual([0, 0]);
  });

  test('when FaceID answers with neither Content-Length nor chunked and ends the answer by closing, then the service answers 201 and the next request opens a new connection', async () => {
    const faceid = await scripted([
      (socket, index) => {
        socket.write(`HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n`);
        socket.end(tokenBody(`until-close-${index}`));
      },
    ]);
    const target = await startAgainst(faceid);
    await expectTokenAtFirstAttempt(target, 'until-close-0');
    await expectTokenAtFirstAttempt(target, 'until-close-1');
    expect(faceid.connections()).toBe(2);
    expect(faceid.requests.map((request) => request.connection)).toEqual([0, 1]);
  });
});

describe('connection reuse', () => {
  test('when FaceID keeps connections alive, then three requests one after another share one connection', async () => {
    const faceid = await scripted([keepAlive]);
    const target = await startAgainst(faceid);
    for (const index of [0, 1, 2]) {
      await expectTokenAtFirstAttempt(target, `token-${index}`);
    }
    expect(faceid.connections()).toBe(1);
    expect(faceid.requests.map((request) => request.connection)).toEqual([0, 0, 0]);
  });

  // The stand-in leaves the connection open: only the service's own reading of the answer may close it.
  test.each([
    ['Connection: close', lengthAnswer('closing', { headers: 'Connection: close\r\n' })],
    ['an HTTP/1.0 answer with Content-Length', lengthAnswer('closing', { statusLine: 'HTTP/1.0 200 OK' })],
    [
      'an HTTP/1.0 answer framed by chunks, however it asks to be kept alive',
      `HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n${Buffer.byteLength(tokenBody('closing')).toString(16)}\r\n${tokenBody('closing')}\r\n0\r\n\r\n`,
    ],
  ])('when FaceID answers with %s, then the service answers 201, closes that connection, and the next request uses a new one', async (_what, answer) => {
    const faceid = await scripted([(socket) => void socket.write(answer), keepAlive]);
    const target = await startAgainst(faceid);
    await expectTokenAtFirstAttempt(target, 'closing');
    await faceid.closed(0);
    await expectTokenAtFirstAttempt(target, 'token-1');
    expect(faceid.connections()).toBe(2);
    expect(faceid.requests.map((request) => request.connection)).toEqual([0, 1]);
  });

  test('when two requests ran at once, then the next one reuses the connection released last', async () => {
    // The first request to arrive is answered 100 ms after the second, so its connection is idle last.
    const faceid = await scripted([
      (socket, index) => {
        const answer = lengthAnswer(`token-${index}`);
        if (index === 0) setTimeout(() => socket.write(answer), 100);
        else socket.write(answer);
      },
    ]);
    const target = await startAgainst(faceid);
    const both = await Promise.all([postToken(target), postToken(target)]);
    expect(both.map((response) => response.status)).toEqual([201, 201]);
    expect(faceid.connections()).toBe(2);
    await expectTokenAtFirstAttempt(target, 'token-2');
    expect(faceid.requests[2]?.connection).toBe(faceid.requests[0]?.connection);
  });

  test('when bytes follow a complete answer in the same write, then the service answers 201 but closes that connection, and the next request uses a new one', async () => {
    const faceid = await scripted([(socket) => void socket.write(`${lengthAnswer('first')}HTTP/1.1 200 OK\r\n`), keepAlive]);
    const target = await startAgainst(faceid);
    await expectTokenAtFirstAttempt(target, 'first');
    await faceid.closed(0);
    await expectTokenAtFirstAttempt(target, 'token-1');
    expect(faceid.requests.map((request) => request.connection)).toEqual([0, 1]);
  });

  test('when stray bytes arrive on a kept-alive connection after its answer, then the service drops that idle connection and the next request uses a new one', async () => {
    const faceid = await scripted([
      (socket) => {
        socket.write(lengthAnswer('first'));
        setTimeout(() => socket.write('HTTP/1.1 200 OK\r\n'), 5);
      },
      keepAlive,
    ]);
    const target = await startAgainst(faceid);
    await expectTokenAtFirstAttempt(target, 'first');
    await faceid.closed(0);
    await expectTokenAtFirstAttempt(target, 'token-1');
    expect(faceid.requests.map((request) => request.connection)).toEqual([0, 1]);
  });

  test('when FaceID answers before reading the photos and stray bytes follow while they are still being sent, then the service does not reuse that connection', async () => {
    const faceid = await scripted(
      [
        (socket, index) => {
          socket.write(lengthAnswer(`early-${index}`));
          if (index === 0) setTimeout(() => socket.write('HTTP/1.1 200 OK\r\n'), 20);
        },
      ],
      { early: true },
    );
    const target = await startAgainst(faceid, { FACEID_TIMEOUT_MS: '5000' });
    // 12 MB: more than the loopback buffers hold, so the upload is still being written when the stray bytes come.
    const photo = Buffer.concat([jpeg(64, 64), Buffer.alloc(12 * 1024 * 1024, 0x41)]);
    expectToken(await postToken(target, { fields: validForm().fields, files: { image_ref1: photo } }), 'early-0');
    await expectTokenAtFirstAttempt(target, 'early-1');
    expect(faceid.requests.map((request) => request.connection)).toEqual([0, 1]);
  });

  test('when FaceID answers before reading the photos, then the next upload does not reuse their buffer while they are still being sent', async () => {
    const faceid = await scripted([(socket, index) => void socket.write(lengthAnswer(`early-${index}`))], { early: true });
    const target = await startAgainst(faceid, { FACEID_TIMEOUT_MS: '5000' });
    // 12 MB photos: more than the loopback socket buffers hold, so sending them waits for FaceID to read.
    const photo = (fill: number): Buffer => Buffer.concat([jpeg(64, 64), Buffer.alloc(12 * 1024 * 1024, fill)]);
    const first = photo(0x41);
    expectToken(await postToken(target, { fields: validForm().fields, files: { image_ref1: first } }), 'early-0');
    // The first answer is out: its pooled buffer may now be reused by this upload.
    expectToken(await postToken(target, { fields: validForm().fields, files: { image_ref1: photo(0x42) } }), 'early-1');
    // Both bodies reach FaceID whole (the connection took the rest of the first); the first is still the first photo.
    for (let waited = 0; (faceid.requests[1]?.body.length ?? 0) === 0 && waited < 5_000; waited += 50) await sleep(50);
    expect(faceid.requests.map((request) => request.connection)).toEqual([0, 0]);
    expect(faceid.requests[0]?.body.includes(first)).toBe(true);
  }, 20_000);

  test('when FaceID closes a kept-alive connection a few ms after answering, then the next request succeeds at the first attempt on a new connection', async () => {
    const faceid = await scripted([
      (socket) => {
        socket.write(lengthAnswer('first'));
        setTimeout(() => socket.end(), 5);
      },
      keepAlive,
    ]);
    const target = await startAgainst(faceid);
    await expectTokenAtFirstAttempt(target, 'first');
    // Both ends closed: the service has seen FaceID's end. (A request racing that end is a retry case.)
    await faceid.closed(0);
    await expectTokenAtFirstAttempt(target, 'token-1');
    expect(faceid.connections()).toBe(2);
    expect(faceid.requests.map((request) => request.connection)).toEqual([0, 1]);
  });

  test('when FaceID ends the connection in the same write as a kept-alive answer, then the next request succeeds at the first attempt on a new connection', async () => {
    const faceid = await scripted([(socket) => void socket.end(lengthAnswer('first')), keepAlive]);
    const target = await startAgainst(faceid);
    await expectTokenAtFirstAttempt(target, 'first');
    await expectTokenAtFirstAttempt(target, 'token-1');
    expect(faceid.requests.map((request) => request.connection)).toEqual([0, 1]);
  });

  test('when FaceID drops the connection halfway through the body once, then the service retries it as a network error and answers 201 after 2 attempts', async () => {
    const faceid = await scripted([
      (socket) => {
        const answer = lengthAnswer('lost');
        socket.write(answer.slice(0, answer.length - 20), () => socket.destroy());
      },
      keepAlive,
    ]);
    const target = await startAgainst(faceid);
    const response = await postToken(target);
    expectToken(response, 'token-1');
    expect(upstreamOf(target, response)).toMatchObject({ attempts: 2 });
    expect(faceid.connections()).toBe(2);
    expect(faceid.requests.map((request) => request.connection)).toEqual([0, 1]);
  });
});

describe('answers the service must not use: 502 UPSTREAM_ERROR at the first attempt', () => {
  const LIMIT = 64 * 1024;

  /** Sends `body` chunked in 4 KB chunks. */
  const chunkedAnswer = (body: string): string => {
    let text = 'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n';
    for (let offset = 0; offset < body.length; offset += 4096) {
      const chunk = body.slice(offset, offset + 4096);
      text += `${chunk.length.toString(16)}\r\n${chunk}\r\n`;
    }
    return `${text}0\r\n\r\n`;
  };
  const lengthFramed = (body: string): string => `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`;

  // Each is a valid token answer but for its size: a service without the limit would answer 201.
  test.each([
    ['chunked', chunkedAnswer(paddedTokenBody('too-big', LIMIT + 1))],
    ['framed by Content-Length', lengthFramed(paddedTokenBody('too-big', LIMIT + 1))],
  ])('when FaceID answers 1 byte over 64 KB, %s, then the service answers 502 UPSTREAM_ERROR after exactly 1 attempt', async (_framing, answer) => {
    const faceid = await scripted([(socket) => void socket.write(answer)]);
    const target = await startAgainst(faceid);
    const response = await postToken(target);
    expectProblem(response, 502, 'UPSTREAM_ERROR', null);
    expect(response.text).not.toContain('too-big');
    expect(upstreamOf(target, response)).toMatchObject({ attempts: 1, faceidResult: 'UNREADABLE' });
    expect(faceid.requests).toHaveLength(1);
  });

  test.each([
    ['chunked', chunkedAnswer(paddedTokenBody('just-fits', LIMIT))],
    ['framed by Content-Length', lengthFramed(paddedTokenBody('just-fits', LIMIT))],
  ])('when FaceID answers exactly 64 KB, %s, then the service answers 201 with its biz_token', async (_framing, answer) => {
    const faceid = await scripted([(socket) => void socket.write(answer)]);
    const target = await startAgainst(faceid);
    await expectTokenAtFirstAttempt(target, 'just-fits');
  });

  const body = tokenBody('malformed');
  const length = Buffer.byteLength(body);
  // Each would be a token answer to a lenient reader; the stand-in keeps the connection open, so a reader
  // that waited for more would end in 504, not 502.
  test.each([
    ['a garbage status line', `NOT-HTTP garbage\r\nContent-Type: application/json\r\nContent-Length: ${length}\r\n\r\n${body}`],
    ['two different Content-Length values', `HTTP/1.1 200 OK\r\nContent-Length: ${length}\r\nContent-Length: ${length + 1}\r\n\r\n${body}`],
    ['an obsolete folded header line', `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Note: first\r\n  continued\r\nContent-Length: ${length}\r\n\r\n${body}`],
    ['101 Switching Protocols', `HTTP/1.1 101 Switching Protocols\r\nUpgrade: other\r\n\r\n${lengthAnswer('malformed')}`],
    ['a head over 16 KB', `HTTP/1.1 200 OK\r\nX-Padding: ${'p'.repeat(16 * 1024)}\r\nContent-Length: ${length}\r\n\r\n${body}`],
    ['a chunk-size line over 1 KB', `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n${length.toString(16)};ext=${'e'.repeat(1024)}\r\n${body}\r\n0\r\n\r\n`],
    ['a chunk-size that is not hexadecimal', `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x${length.toString(16)}\r\n${body}\r\n0\r\n\r\n`],
    ['bare line feeds after the status line', `HTTP/1.1 200 OK\nContent-Type: application/json\nContent-Length: ${length}\r\n\r\n${body}`],
    ['both Transfer-Encoding and Content-Length', `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: ${length}\r\n\r\n${length.toString(16)}\r\n${body}\r\n0\r\n\r\n`],
  ])('when FaceID answers with %s, then the service answers 502 UPSTREAM_ERROR after exactly 1 attempt', async (_what, answer) => {
    const faceid = await scripted([(socket) => void socket.write(answer)]);
    const target = await startAgainst(faceid);
    const response = await postToken(target);
    expectProblem(response, 502, 'UPSTREAM_ERROR', null);
    expect(response.text).not.toContain('malformed');
    expect(upstreamOf(target, response)).toMatchObject({ attempts: 1, faceidResult: 'UNREADABLE' });
    expect(faceid.requests).toHaveLength(1);
  });
});

describe('HTTPS', () => {
  // Test-only: a self-signed certificate and key for 127.0.0.1/localhost (openssl req -x509, valid 36500
  // days), trusted by nothing but the child processes these tests start with NODE_EXTRA_CA_CERTS.
  const CERT_PATH = path.join(__dirname, 'fixtures', 'tls', 'faceid-test.crt');
  const KEY_PATH = path.join(__dirname, 'fixtures', 'tls', 'faceid-test.key');

  async function tlsFaceId(): Promise<ScriptedFaceId> {
    return scripted([keepAlive], { tls: { key: readFileSync(KEY_PATH), cert: readFileSync(CERT_PATH) } });
  }

  /**
   * The built service as its own process (dist/server.js): only a new process can be told to trust a
   * certificate, through NODE_EXTRA_CA_CERTS.
   */
  async function childAgainst(faceid: ScriptedFaceId, env: Record<string, string> = {}): Promise<ChildService> {
    const child = await startChildService({
      FACEID_BASE_URL: faceid.url,
      FACEID_API_KEY: SANDBOX_KEY,
      FACEID_API_SECRET: SANDBOX_SECRET,
      AUTH_JWT_SECRET: TEST_JWT_SECRET,
      FACEID_TIMEOUT_MS: '1500',
      ...env,
    });
    defer(() => child.stop('SIGKILL'));
    return child;
  }

  const postTokenTo = (child: ChildService): Promise<supertest.Response> => postToken(targetOf(child));


  /** The request's upstream facts from the child's log line; the line may trail the answer a little. */
  async function childUpstreamOf(child: ChildService, response: supertest.Response): Promise<Record<string, unknown>> {
    const requestId = response.headers['x-request-id'];
    for (let waited = 0; ; waited += 20) {
      const line = child
        .output()
        .split('\n')
        .filter((text) => text.startsWith('{'))
        .map((text) => JSON.parse(text) as Record<string, unknown>)
        .find((entry) => entry.request_id === requestId && 'latency_ms' in entry);
      if (line !== undefined) return (line.upstream ?? {}) as Record<string, unknown>;
      if (waited > 1_000) throw new Error(`no log line for ${String(requestId)}:\n${child.output()}`);
      await sleep(20);
    }
  }

  test('when FaceID is at an https URL whose certificate the process trusts, then the service answers 201 with its biz_token and keeps the TLS connection', async () => {
    const faceid = await tlsFaceId();
    const child = await childAgainst(faceid, { NODE_EXTRA_CA_CERTS: CERT_PATH });
    const first = await postTokenTo(child);
    expectToken(first, 'token-0');
    expect(await childUpstreamOf(child, first)).toMatchObject({ attempts: 1 });
    expectToken(await postTokenTo(child), 'token-1');
    expect(faceid.connections()).toBe(1);
    expect(faceid.requests.map((request) => request.connection)).toEqual([0, 0]);
  });

  test('when FaceID\'s certificate is not trusted, then the service answers 502 UPSTREAM_ERROR after 1 attempt, sends nothing, and tells the caller nothing of TLS', async () => {
    const faceid = await tlsFaceId();
    const child = await childAgainst(faceid);
    const response = await postTokenTo(child);
    expectProblem(response, 502, 'UPSTREAM_ERROR', null);
    for (const word of ['certificate', 'CERT', 'self-signed', 'SELF_SIGNED', '127.0.0.1', 'TLS']) expect(response.text).not.toContain(word);
    expect(await childUpstreamOf(child, response)).toMatchObject({ attempts: 1, faceidResult: 'CONNECTION_FAILED' });
    expect(faceid.requests).toHaveLength(0);
  });

  test('when FaceID is at https://localhost and closes each connection after its answer, then the service sends the host name and the next connection resumes the TLS session', async () => {
    const faceid = await scripted([(socket, index) => void socket.write(lengthAnswer(`resumed-${index}`, { headers: 'Connection: close\r\n' }))], {
      tls: { key: readFileSync(KEY_PATH), cert: readFileSync(CERT_PATH) },
    });
    const child = await childAgainst(faceid, { NODE_EXTRA_CA_CERTS: CERT_PATH, FACEID_BASE_URL: faceid.url.replace('127.0.0.1', 'localhost') });
    expectToken(await postTokenTo(child), 'resumed-0');
    await faceid.closed(0);
    expectToken(await postTokenTo(child), 'resumed-1');
    expect(faceid.handshakes).toEqual([
      { servername: 'localhost', resumed: false },
      { servername: 'localhost', resumed: true },
    ]);
  });

  test('when FaceID accepts the connection but never completes the TLS handshake, then the service answers 504 UPSTREAM_TIMEOUT at FACEID_TIMEOUT_MS', async () => {
    // Reads and drops the ClientHello, answers nothing; reading lets it see the service's close.
    const silent = net.createServer((socket) => socket.on('error', () => undefined).resume());
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    defer(() => new Promise((resolve) => silent.close(resolve)));
    const target = await start({ FACEID_BASE_URL: `https://127.0.0.1:${(silent.address() as AddressInfo).port}`, FACEID_TIMEOUT_MS: '300' });
    const started = performance.now();
    const response = await postToken(target);
    expectProblem(response, 504, 'UPSTREAM_TIMEOUT', null);
    expect(performance.now() - started).toBeLessThan(1_500);
    expect(upstreamOf(target, response)).toMatchObject({ attempts: 1, faceidResult: 'TIMEOUT' });
  });
});

describe('closing', () => {
  test('when the service closes, then its kept-alive connections to FaceID close with it', async () => {
    const faceid = await scripted([keepAlive]);
    const target = await startAgainst(faceid);
    await expectTokenAtFirstAttempt(target, 'token-0');
    await target.close();
    await faceid.closed(0);
  });
});
