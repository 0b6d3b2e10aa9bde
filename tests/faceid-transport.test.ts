import { readFileSync } from 'node:fs';
import http from 'node:http';
import net, { type AddressInfo, type Socket } from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import type supertest from 'supertest';
import { jpeg } from './fixtures/images';
import { type ChildService, startChildService, targetOf } from './helpers/child-service';
import {
  cleanupAfter,
  expectProblem,
  postToken,
  SANDBOX_KEY,
  SANDBOX_SECRET,
  TEST_JWT_SECRET,
  type TestService,
  type TokenForm,
} from './helpers/test-service';

/**
 * The transport to FaceID (one axios instance, keep-alive agents, no redirects, a 64 KiB answer limit, one
 * deadline per exchange), seen only as the service's caller sees it: through POST /v1/biz-tokens. Against
 * the real sandbox where it can show the behaviour (connection counts through GET /sandbox/stats), and
 * otherwise against a raw TCP (or TLS) FaceID stand-in that writes each answer byte for byte as scripted.
 */

const { start, defer } = cleanupAfter(afterEach);

// ---------------------------------------------------------------------------------------------------------
// The scripted FaceID stand-in
// ---------------------------------------------------------------------------------------------------------

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
  port: number;
  /** Every request whose head arrived, in order. */
  requests: ReceivedRequest[];
  /** TCP connections accepted so far (for TLS: whether or not the handshake completed). */
  tcpConnections: () => number;
  /** Connections that carry HTTP: every TCP one, or for TLS the ones whose handshake completed. */
  connections: () => number;
  /** Per completed TLS handshake: the host name the client sent (SNI). */
  handshakes: Array<{ servername: string | false | null }>;
  /** Resolves once the stand-in's end of that (HTTP-carrying) connection has closed; rejects after `ms`. */
  closed: (connection: number, ms?: number) => Promise<void>;
  close: () => Promise<void>;
}

/**
 * A FaceID stand-in on 127.0.0.1 port 0 that reads each request (head up to the empty line, then
 * Content-Length bytes of body) and lets `answers[index]` write the answer once the body is in; requests
 * past the script get its last answer. With `tls`, it speaks TLS with that key and certificate.
 */
async function scriptedFaceId(
  answers: Answer[],
  options: { tls?: { key: Buffer; cert: Buffer } } = {},
): Promise<ScriptedFaceId> {
  const requests: ReceivedRequest[] = [];
  const sockets: Socket[] = [];
  const handshakes: ScriptedFaceId['handshakes'] = [];
  const closings: Array<Promise<void>> = [];
  const rawSockets = new Set<Socket>();
  let tcpConnections = 0;
  const answer = (socket: Socket, index: number): void =>
    (answers[Math.min(index, answers.length - 1)] as Answer)(socket, index);
  const accept = (socket: Socket): void => {
    const connection = sockets.length;
    sockets.push(socket);
    if (socket instanceof tls.TLSSocket) handshakes.push({ servername: socket.servername });
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
        }
        if (pending.length < bodyBytes) return;
        current.body = pending.subarray(0, bodyBytes);
        pending = pending.subarray(bodyBytes);
        current = undefined;
        answer(socket, requests.length - 1);
      }
    });
  };
  const server = options.tls === undefined ? net.createServer(accept) : tls.createServer(options.tls, accept);
  server.on('connection', (socket: Socket) => {
    tcpConnections += 1;
    rawSockets.add(socket);
    socket.on('error', () => undefined);
    socket.once('close', () => rawSockets.delete(socket));
  });
  // A client that refuses the certificate ends the handshake; nothing to report.
  server.on('tlsClientError', () => undefined);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `${options.tls === undefined ? 'http' : 'https'}://127.0.0.1:${port}`,
    port,
    requests,
    tcpConnections: () => tcpConnections,
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
        for (const socket of [...sockets, ...rawSockets]) socket.destroy();
      }),
  };
}

async function scripted(
  answers: Answer[],
  options: { tls?: { key: Buffer; cert: Buffer } } = {},
): Promise<ScriptedFaceId> {
  const faceid = await scriptedFaceId(answers, options);
  defer(faceid.close);
  return faceid;
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

/** A token answer body of exactly `bodyBytes` bytes of valid JSON: only its size can make it unreadable. */
function paddedTokenBody(token: string, bodyBytes: number): string {
  const bare = JSON.stringify({ biz_token: token, request_id: '1,abc', time_used: 1, padding: '' });
  return JSON.stringify({
    biz_token: token,
    request_id: '1,abc',
    time_used: 1,
    padding: 'x'.repeat(bodyBytes - bare.length),
  });
}

/** A listener that accepts connections, reads everything and never answers a byte. */
async function silentListener(): Promise<{
  port: number;
  accepted: () => number;
  closed: (ms?: number) => Promise<void>;
}> {
  const sockets: Socket[] = [];
  const closings: Array<Promise<void>> = [];
  const server = net.createServer((socket) => {
    sockets.push(socket);
    closings.push(new Promise((resolve) => socket.once('close', () => resolve())));
    socket.on('error', () => undefined).resume();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  defer(
    () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const socket of sockets) socket.destroy();
      }),
  );
  return {
    port: (server.address() as AddressInfo).port,
    accepted: () => sockets.length,
    closed: async (ms = 1_000) => {
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<never>((_resolve, reject) => {
        timer = setTimeout(
          () => reject(new Error(`not all of ${sockets.length} connection(s) closed after ${ms} ms`)),
          ms,
        );
      });
      await Promise.race([Promise.all(closings), late]).finally(() => clearTimeout(timer));
    },
  };
}

// ---------------------------------------------------------------------------------------------------------
// The service and what it answered
// ---------------------------------------------------------------------------------------------------------

/** The service under test, talking to the stand-in; a short deadline so an answer it waits on fails fast. */
const startAgainst = (faceid: { url: string }, env: Record<string, string> = {}): Promise<TestService> =>
  start({ FACEID_BASE_URL: faceid.url, FACEID_TIMEOUT_MS: '1500', ...env });

/** The request's upstream facts from its own log line (written when the answer went out). */
function upstreamOf(target: TestService, response: supertest.Response): Record<string, unknown> {
  const requestId = response.headers['x-request-id'];
  const lines = target.log.lines().filter((line) => line.request_id === requestId && 'latency_ms' in line);
  expect(lines).toHaveLength(1);
  return (lines[0]?.upstream ?? {}) as Record<string, unknown>;
}

/** A 201 carrying exactly FaceID's biz_token. */
function expectToken(response: supertest.Response, bizToken: string): void {
  expect({ status: response.status, body: response.body as unknown }).toMatchObject({
    status: 201,
    body: { biz_token: bizToken },
  });
  expect(typeof (response.body as { expires_at?: unknown }).expires_at).toBe('string');
}

/** A new request's 201 carries exactly `bizToken`, got at FaceID's first attempt. */
async function expectTokenAtFirstAttempt(target: TestService, bizToken: string): Promise<void> {
  const response = await postToken(target);
  expectToken(response, bizToken);
  expect(upstreamOf(target, response)).toMatchObject({ attempts: 1 });
}

const PROBLEM_KEYS = ['code', 'detail', 'param', 'request_id', 'status', 'title', 'type'];
/** What the transport knows and the caller must not learn: parser, socket, limit and TLS vocabulary. */
const TRANSPORT_WORDS = [
  'HPE_',
  'Parse Error',
  'parse error',
  'ECONN',
  'aborted',
  'maxContentLength',
  'redirect',
  'Location',
  'socket',
  'axios',
  'certificate',
  'CERT',
  'self-signed',
  'self signed',
  'SELF_SIGNED',
  'TLS',
  'SSL',
  'localhost',
  '127.0.0.1',
  '/faceid/v3',
];

/** 502 UPSTREAM_ERROR as a strict problem, with nothing of FaceID's answer or the transport in it. */
function expectUpstreamError(response: supertest.Response, secrets: string[] = []): void {
  const body = expectProblem(response, 502, 'UPSTREAM_ERROR', null);
  expect(Object.keys(body).filter((key) => !PROBLEM_KEYS.includes(key))).toEqual([]);
  // The request id is a random UUID: digits searched for below could turn up in it by chance.
  const text = response.text.replaceAll(String(body.request_id), '<request-id>');
  for (const word of [...TRANSPORT_WORDS, SANDBOX_KEY, SANDBOX_SECRET, ...secrets]) expect(text).not.toContain(word);
  expect(text).not.toMatch(/stack|\n\s+at |\(\/.*:\d+:\d+\)/i);
}

async function timed<T>(work: () => Promise<T>): Promise<{ result: T; ms: number }> {
  const started = performance.now();
  const result = await work();
  return { result, ms: performance.now() - started };
}

// ---------------------------------------------------------------------------------------------------------
// 1. Connection reuse, counted by the real sandbox
// ---------------------------------------------------------------------------------------------------------

interface SandboxStats {
  connections: number;
  requests: number;
}

/**
 * GET /sandbox/stats on a connection of its own (no agent, `Connection: close`): the sandbox counts that
 * connection too, before it answers, so FaceID connections between two reads = difference - 1.
 */
function sandboxStats(target: TestService): Promise<SandboxStats> {
  return new Promise((resolve, reject) => {
    const request = http.get(`${target.sandbox.url}/sandbox/stats`, { agent: false }, (response) => {
      let text = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (text += chunk));
      response.on('end', () => {
        try {
          const stats = JSON.parse(text) as SandboxStats;
          expect({
            status: response.statusCode,
            connections: typeof stats.connections,
            requests: typeof stats.requests,
          }).toEqual({
            status: 200,
            connections: 'number',
            requests: 'number',
          });
          resolve(stats);
        } catch (error) {
          reject(error);
        }
      });
    });
    request.on('error', reject);
  });
}

/** FaceID connections and token requests the sandbox saw between two reads of its stats. */
const faceIdTraffic = (before: SandboxStats, after: SandboxStats): SandboxStats => ({
  connections: after.connections - before.connections - 1,
  requests: after.requests - before.requests,
});

/** A realistic photo: large enough that the form-data body takes many writes. */
function photoForm(bizNo?: string): Required<TokenForm> {
  const fields: Record<string, string> = { comparison_type: '0', liveness_type: 'meglive' };
  if (bizNo !== undefined) fields.biz_no = bizNo;
  return { fields, files: { image_ref1: jpeg(640, 480) } };
}

describe('connection reuse (counted by the sandbox)', () => {
  test('when 4 token requests with a 640x480 photo come one after another, then they all reach FaceID over one kept-alive connection', async () => {
    const target = await start();
    const before = await sandboxStats(target);
    for (let i = 0; i < 4; i++) {
      const response = await postToken(target, photoForm());
      expect(response.status).toBe(201);
      expect(upstreamOf(target, response)).toMatchObject({ attempts: 1 });
    }
    // A client that leaks a socket per call (axios >= 1.15.1 with maxBodyLength and a form-data body) opens 4.
    expect(faceIdTraffic(before, await sandboxStats(target))).toEqual({ connections: 1, requests: 4 });
  });

  test('when 6 token requests arrive at once with FACEID_MAX_CONCURRENCY=2 and FaceID takes 200 ms each, then all get 201 over at most 2 FaceID connections', async () => {
    const target = await start({
      FACEID_MAX_CONCURRENCY: '2',
      FACEID_QUEUE_TIMEOUT_MS: '5000',
      FACEID_TIMEOUT_MS: '5000',
    });
    const before = await sandboxStats(target);
    const { result: responses, ms } = await timed(() =>
      Promise.all(Array.from({ length: 6 }, () => postToken(target, photoForm('sandbox:latency=200')))),
    );
    expect(responses.map((response) => response.status)).toEqual([201, 201, 201, 201, 201, 201]);
    const traffic = faceIdTraffic(before, await sandboxStats(target));
    expect(traffic.requests).toBe(6);
    expect(traffic.connections).toBeGreaterThanOrEqual(1);
    expect(traffic.connections).toBeLessThanOrEqual(2);
    // Two at a time, 200 ms each: the latency was applied and the calls did wait for each other.
    expect(ms).toBeGreaterThanOrEqual(550);
  });
});

// ---------------------------------------------------------------------------------------------------------
// 2. How FaceID may frame (or break) its answer
// ---------------------------------------------------------------------------------------------------------

describe('FaceID answers, framed every way', () => {
  test('when FaceID answers chunked, with a chunk extension and a trailer, one byte per write, then the service answers 201 with its biz_token and the next request reuses the connection', async () => {
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

  test("when FaceID sends an interim 100 Continue, then the head, then the body in separate writes, then the service answers 201 with the real answer's biz_token", async () => {
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

  test('when FaceID answers with neither Content-Length nor chunked and ends the answer by closing, then the service answers 201 and the next request opens a new connection at its first attempt', async () => {
    const faceid = await scripted([
      (socket, index) => {
        socket.write('HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n');
        socket.end(tokenBody(`until-close-${index}`));
      },
    ]);
    const target = await startAgainst(faceid);
    await expectTokenAtFirstAttempt(target, 'until-close-0');
    await expectTokenAtFirstAttempt(target, 'until-close-1');
    expect(faceid.requests.map((request) => request.connection)).toEqual([0, 1]);
  });

  const body = tokenBody('malformed');
  const length = Buffer.byteLength(body);
  // Each would be a token answer to a lenient reader; the stand-in keeps the connection open, so a reader
  // that waited for more would end in 504, not 502.
  test.each([
    [
      'a garbage status line',
      `NOT-HTTP garbage\r\nContent-Type: application/json\r\nContent-Length: ${length}\r\n\r\n${body}`,
    ],
    [
      'two different Content-Length values',
      `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${length}\r\nContent-Length: ${length + 1}\r\n\r\n${body}`,
    ],
    [
      'a chunk size that is not hexadecimal',
      `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n0x${length.toString(16)}\r\n${body}\r\n0\r\n\r\n`,
    ],
    [
      'both Transfer-Encoding and Content-Length',
      `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: ${length}\r\n\r\n${length.toString(16)}\r\n${body}\r\n0\r\n\r\n`,
    ],
  ])(
    'when FaceID answers with %s, then the service answers 502 UPSTREAM_ERROR after exactly 1 attempt, telling nothing of the answer',
    async (_what, answer) => {
      const faceid = await scripted([(socket) => void socket.write(answer)]);
      const target = await startAgainst(faceid);
      const response = await postToken(target);
      expectUpstreamError(response, ['malformed', 'garbage']);
      expect(upstreamOf(target, response)).toMatchObject({ attempts: 1, faceidResult: 'UNREADABLE' });
      expect(faceid.requests).toHaveLength(1);
    },
  );

  test("when FaceID's answer is cut short (Content-Length says more, then the connection closes), then the service answers 502 UPSTREAM_ERROR after exactly 1 attempt, and the next request succeeds on a new connection", async () => {
    const faceid = await scripted([
      (socket) => {
        const answer = lengthAnswer('cut-short');
        socket.end(answer.slice(0, answer.length - 20));
      },
      keepAlive,
    ]);
    const target = await startAgainst(faceid);
    const response = await postToken(target);
    // Observed behaviour: axios reports the aborted answer as ERR_BAD_RESPONSE, which the client treats as an
    // unreadable answer (not retried): FaceID may have issued (and billed) a token whose answer was lost.
    expectUpstreamError(response, ['cut-short']);
    expect(upstreamOf(target, response)).toMatchObject({ attempts: 1, faceidResult: 'UNREADABLE' });
    expect(faceid.requests).toHaveLength(1);
    await expectTokenAtFirstAttempt(target, 'token-1');
    expect(faceid.requests.map((request) => request.connection)).toEqual([0, 1]);
  });

  const LIMIT = 64 * 1024;
  /** Sends `text` chunked in 4 KB chunks. */
  const chunkedAnswer = (text: string): string => {
    let answer = 'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n';
    for (let offset = 0; offset < text.length; offset += 4096) {
      const chunk = text.slice(offset, offset + 4096);
      answer += `${chunk.length.toString(16)}\r\n${chunk}\r\n`;
    }
    return `${answer}0\r\n\r\n`;
  };
  const lengthFramed = (text: string): string =>
    `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${text.length}\r\n\r\n${text}`;

  // Each is a valid token answer but for its size: a service without the limit would answer 201.
  test.each([
    ['chunked', chunkedAnswer(paddedTokenBody('too-big', LIMIT + 1))],
    ['framed by Content-Length', lengthFramed(paddedTokenBody('too-big', LIMIT + 1))],
  ])(
    'when FaceID answers 1 byte over 64 KiB, %s, then the service answers 502 UPSTREAM_ERROR after exactly 1 attempt',
    async (_framing, answer) => {
      const faceid = await scripted([(socket) => void socket.write(answer)]);
      const target = await startAgainst(faceid);
      const response = await postToken(target);
      expectUpstreamError(response, ['too-big', 'xxxx']);
      expect(upstreamOf(target, response)).toMatchObject({ attempts: 1, faceidResult: 'UNREADABLE' });
      expect(faceid.requests).toHaveLength(1);
    },
  );

  // The other side of the limit: the limit is 64 KiB, not less.
  test.each([
    ['chunked', chunkedAnswer(paddedTokenBody('just-fits', LIMIT))],
    ['framed by Content-Length', lengthFramed(paddedTokenBody('just-fits', LIMIT))],
  ])(
    'when FaceID answers exactly 64 KiB, %s, then the service answers 201 with its biz_token',
    async (_framing, answer) => {
      const faceid = await scripted([(socket) => void socket.write(answer)]);
      const target = await startAgainst(faceid);
      await expectTokenAtFirstAttempt(target, 'just-fits');
    },
  );

  test('when FaceID answers 302 Found with a Location at another host, then the service answers 502 UPSTREAM_ERROR after 1 attempt and the other host receives nothing', async () => {
    // Were the redirect followed, the other host would hand out a token and the answer would be 201.
    const elsewhere = await scripted([keepAlive]);
    const location = `${elsewhere.url}/faceid/v3/sdk/get_biz_token`;
    const redirectBody = tokenBody('from-the-302');
    const faceid = await scripted([
      (socket) =>
        void socket.write(
          `HTTP/1.1 302 Found\r\nLocation: ${location}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(redirectBody)}\r\n\r\n${redirectBody}`,
        ),
    ]);
    const target = await startAgainst(faceid);
    const response = await postToken(target);
    expectUpstreamError(response, ['from-the-302', String(elsewhere.port), '302']);
    expect(upstreamOf(target, response)).toMatchObject({ attempts: 1, faceidResult: 'UNREADABLE' });
    expect(faceid.requests).toHaveLength(1);
    // Give a redirect that were followed asynchronously the time to arrive.
    await sleep(100);
    expect(elsewhere.tcpConnections()).toBe(0);
    expect(elsewhere.requests).toHaveLength(0);
  });
});

// ---------------------------------------------------------------------------------------------------------
// 3. HTTPS (the service as its own process: only a new process can be told to trust a certificate)
// ---------------------------------------------------------------------------------------------------------

describe('HTTPS', () => {
  // Test-only: a self-signed certificate for CN=localhost, SAN IP:127.0.0.1 and DNS:localhost, trusted by
  // nothing but the child processes started here with NODE_EXTRA_CA_CERTS.
  const CERT_PATH = path.join(__dirname, 'fixtures', 'tls', 'faceid-test.crt');
  const KEY_PATH = path.join(__dirname, 'fixtures', 'tls', 'faceid-test.key');

  const tlsFaceId = (): Promise<ScriptedFaceId> =>
    scripted([keepAlive], { tls: { key: readFileSync(KEY_PATH), cert: readFileSync(CERT_PATH) } });

  /** The built service (dist/server.js) as a process of its own, with exactly this environment. */
  async function childAgainst(faceid: ScriptedFaceId, env: Record<string, string> = {}): Promise<ChildService> {
    const child = await startChildService({
      FACEID_BASE_URL: `https://localhost:${faceid.port}`,
      FACEID_API_KEY: SANDBOX_KEY,
      FACEID_API_SECRET: SANDBOX_SECRET,
      AUTH_JWT_SECRET: TEST_JWT_SECRET,
      FACEID_TIMEOUT_MS: '3000',
      RATE_LIMIT_MAX: '1000',
      ...env,
    });
    defer(() => child.stop('SIGKILL'));
    return child;
  }

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

  test("when FaceID's certificate is not trusted, then the service answers 502 UPSTREAM_ERROR after exactly 1 attempt, sends nothing, and tells the caller nothing of TLS", async () => {
    const faceid = await tlsFaceId();
    const child = await childAgainst(faceid);
    const response = await postToken(targetOf(child));
    expectUpstreamError(response, [String(faceid.port)]);
    expect(await childUpstreamOf(child, response)).toMatchObject({ attempts: 1, faceidResult: 'CONNECTION_FAILED' });
    expect(faceid.tcpConnections()).toBe(1);
    expect(faceid.requests).toHaveLength(0);
  });

  test('when FaceID is at https://localhost with a certificate the process trusts, then the service answers 201 with its biz_token, sends the host name, and two requests share one TLS connection', async () => {
    const faceid = await tlsFaceId();
    const child = await childAgainst(faceid, { NODE_EXTRA_CA_CERTS: CERT_PATH });
    const first = await postToken(targetOf(child));
    expectToken(first, 'token-0');
    expect(await childUpstreamOf(child, first)).toMatchObject({ attempts: 1 });
    expectToken(await postToken(targetOf(child)), 'token-1');
    expect(faceid.tcpConnections()).toBe(1);
    expect(faceid.handshakes).toEqual([{ servername: 'localhost' }]);
    expect(faceid.requests.map((request) => request.connection)).toEqual([0, 0]);
  });
});

// ---------------------------------------------------------------------------------------------------------
// 4. The deadline
// ---------------------------------------------------------------------------------------------------------

describe('the deadline', () => {
  test.each([
    ['reads the request and never answers', 'http'],
    ['never completes the TLS handshake', 'https'],
  ])(
    'when FaceID accepts the connection but %s, then the service answers 504 UPSTREAM_TIMEOUT at about FACEID_TIMEOUT_MS and drops that connection',
    async (_what, scheme) => {
      const silent = await silentListener();
      const target = await start({ FACEID_BASE_URL: `${scheme}://127.0.0.1:${silent.port}`, FACEID_TIMEOUT_MS: '500' });
      const { result: response, ms } = await timed(() => postToken(target));
      const problem = expectProblem(response, 504, 'UPSTREAM_TIMEOUT', null);
      expect(Object.keys(problem).filter((key) => !PROBLEM_KEYS.includes(key))).toEqual([]);
      expect(ms).toBeGreaterThanOrEqual(450);
      expect(ms).toBeLessThan(3_000);
      expect(upstreamOf(target, response)).toMatchObject({ attempts: 1, faceidResult: 'TIMEOUT' });
      expect(silent.accepted()).toBe(1);
      // The service gave the exchange up: it does not keep the stalled connection.
      await silent.closed();
    },
  );
});

// ---------------------------------------------------------------------------------------------------------
// 5. Closing
// ---------------------------------------------------------------------------------------------------------

describe('closing', () => {
  test('when the service closes, then its kept-alive connections to FaceID close with it', async () => {
    const faceid = await scripted([keepAlive]);
    const target = await startAgainst(faceid);
    await expectTokenAtFirstAttempt(target, 'token-0');
    // The connection is idle and kept (well within the 4 s idle timeout) until the service closes.
    await sleep(50);
    await expect(faceid.closed(0, 50)).rejects.toThrow('still open');
    await target.close();
    await faceid.closed(0, 1_000);
  });
});
