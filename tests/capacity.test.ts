import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { MAX_REQUEST_BYTES } from '../src/faceid/parameters';
import {
  expectProblem,
  postToken,
  signToken,
  startTestService,
  type TestService,
  validForm,
} from './helpers/test-service';

/** Capacity rules: the upstream queue, the circuit breaker and the memory bounds. */

const withBizNo = (bizNo: string) => {
  const form = validForm();
  form.fields.biz_no = bizNo;
  return form;
};

describe('the upstream queue', () => {
  let target: TestService;
  afterEach(() => target.close());

  test('when every FaceID slot stays busy past FACEID_QUEUE_TIMEOUT_MS, then the waiting request gets 503 UPSTREAM_BUSY with Retry-After', async () => {
    target = await startTestService({ FACEID_MAX_CONCURRENCY: '1', FACEID_QUEUE_TIMEOUT_MS: '200' });
    const slow = postToken(target, withBizNo('sandbox:latency=800'));
    await new Promise((resolve) => setTimeout(resolve, 100));
    const waiting = await postToken(target, validForm());
    expect(waiting.status).toBe(503);
    expect(waiting.body.code).toBe('UPSTREAM_BUSY');
    expect(waiting.headers['retry-after']).toBe('1');
    expect((await slow).status).toBe(201);
    expect(target.sandbox.received).toHaveLength(1);
  });

  test('when a slot frees up within the queue timeout, then the waiting request is served', async () => {
    target = await startTestService({ FACEID_MAX_CONCURRENCY: '1', FACEID_QUEUE_TIMEOUT_MS: '3000' });
    const [first, second] = await Promise.all([
      postToken(target, withBizNo('sandbox:latency=300')),
      postToken(target, validForm()),
    ]);
    expect([first.status, second.status]).toEqual([201, 201]);
    expect(target.sandbox.received).toHaveLength(2);
  });
});

describe('the circuit breaker', () => {
  let target: TestService;
  beforeEach(async () => {
    target = await startTestService({
      FACEID_BREAKER_FAILURES: '2',
      FACEID_BREAKER_OPEN_MS: '400',
      FACEID_MAX_RETRIES: '0',
    });
  });
  afterEach(() => target.close());

  const metric = async (): Promise<string | undefined> =>
    /^faceid_circuit_state (\d)$/m.exec((await target.http().get('/metrics')).text)?.[1];

  test('when FaceID fails repeatedly, then the breaker opens, fails fast, probes once and closes when FaceID recovers', async () => {
    target.sandbox.setScenario({ outcome: 'INTERNAL_ERROR', times: undefined, latencyMs: 0 });
    expect((await postToken(target)).status).toBe(502);
    expect((await postToken(target)).status).toBe(502);
    expect(target.sandbox.received).toHaveLength(2);

    const fast = await postToken(target);
    expect(fast.status).toBe(503);
    expect(fast.body.code).toBe('UPSTREAM_BUSY');
    expect(Number(fast.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(target.sandbox.received).toHaveLength(2);
    expect(await metric()).toBe('2');

    target.sandbox.setScenario(undefined);
    await new Promise((resolve) => setTimeout(resolve, 450));
    expect((await postToken(target)).status).toBe(201);
    expect(await metric()).toBe('0');
    expect((await postToken(target)).status).toBe(201);
    const messages = target.log.lines().map((line) => line.msg);
    expect(messages).toEqual(
      expect.arrayContaining([
        expect.stringContaining('circuit OPEN'),
        expect.stringContaining('half-open'),
        expect.stringContaining('circuit closed'),
      ]),
    );
  });

  test('when the half-open probe fails, then the breaker opens again', async () => {
    target.sandbox.setScenario({ outcome: 'INTERNAL_ERROR', times: undefined, latencyMs: 0 });
    await postToken(target);
    await postToken(target);
    await new Promise((resolve) => setTimeout(resolve, 450));
    expect((await postToken(target)).status).toBe(502);
    expect(target.sandbox.received).toHaveLength(3);
    expect((await postToken(target)).status).toBe(503);
    expect(target.sandbox.received).toHaveLength(3);
  });

  test("when FaceID keeps refusing the service's credentials, then callers keep seeing 502 UPSTREAM_REJECTED and the breaker stays closed", async () => {
    target.sandbox.setScenario({ outcome: 'API_KEY_BE_DISCONTINUED', times: undefined, latencyMs: 0 });
    for (let index = 0; index < 4; index += 1) {
      const answer = await postToken(target);
      expect([answer.status, answer.body.code]).toEqual([502, 'UPSTREAM_REJECTED']);
    }
    expect(await metric()).toBe('0');
  });

  test('when the breaker fails requests fast, then they spend none of the daily budget', async () => {
    const budgeted = await startTestService({
      FACEID_BREAKER_FAILURES: '2',
      FACEID_BREAKER_OPEN_MS: '400',
      FACEID_MAX_RETRIES: '0',
      FACEID_DAILY_BUDGET: '3',
    });
    try {
      budgeted.sandbox.setScenario({ outcome: 'INTERNAL_ERROR', times: 2, latencyMs: 0 });
      expect((await postToken(budgeted)).status).toBe(502);
      expect((await postToken(budgeted)).status).toBe(502);
      for (let index = 0; index < 3; index += 1) expect((await postToken(budgeted)).status).toBe(503);
      await new Promise((resolve) => setTimeout(resolve, 450));
      // Two calls reached FaceID; the third of the budget is still there for the probe.
      expect((await postToken(budgeted)).status).toBe(201);
      const spent = await postToken(budgeted);
      expect([spent.status, spent.body.code]).toEqual([503, 'UPSTREAM_BUSY']);
      expect(budgeted.sandbox.received).toHaveLength(3);
    } finally {
      await budgeted.close();
    }
  });

  test('when FaceID answers client errors such as NO_FACE_FOUND, then the breaker stays closed', async () => {
    for (let index = 0; index < 4; index += 1)
      expect((await postToken(target, withBizNo('sandbox:NO_FACE_FOUND'))).status).toBe(400);
    expect((await postToken(target)).status).toBe(201);
    expect(await metric()).toBe('0');
  });
});

describe('memory bounds', () => {
  let target: TestService;
  const reservedBytes = async (): Promise<number> =>
    Number(/^upload_memory_reserved_bytes (\d+)$/m.exec((await target.http().get('/metrics')).text)?.[1]);
  let server: http.Server;
  let port: number;
  beforeAll(async () => {
    // The queue timeout leaves the quitter test below ample time to still be waiting when the budget frees up.
    target = await startTestService({ UPLOAD_MEMORY_MB: '20', UPLOAD_QUEUE_TIMEOUT_MS: '600' });
    server = http.createServer(target.service.app).listen(0);
    await new Promise((resolve) => server.once('listening', resolve));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    await target.close();
  });

  /** Streams `totalBytes` of multipart body from one reused 1 MiB chunk, so the test itself holds no 100 MB. */
  const upload = async (totalBytes: number, announce: boolean): Promise<{ status: number; body: string }> => {
    const token = await signToken();
    const boundary = 'capacity-test-boundary';
    const head = Buffer.from(
      `--${boundary}\r\nContent-Disposition: form-data; name="image_ref1"; filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n`,
    );
    const chunk = Buffer.alloc(1024 * 1024, 0x41);
    return new Promise((resolve, reject) => {
      const request = http.request({
        port,
        method: 'POST',
        path: '/v1/biz-tokens',
        headers: {
          Authorization: `Bearer ${token}`,
          'Content-Type': `multipart/form-data; boundary=${boundary}`,
          ...(announce ? { 'Content-Length': String(head.length + totalBytes) } : { 'Transfer-Encoding': 'chunked' }),
        },
      });
      let answered = false;
      request.on('response', (response) => {
        answered = true;
        let body = '';
        response.on('data', (data: Buffer) => (body += data.toString()));
        response.on('end', () => {
          resolve({ status: response.statusCode ?? 0, body });
          request.destroy();
        });
      });
      request.on('error', reject);
      request.write(head);
      let sent = 0;
      const pump = (): void => {
        while (sent < totalBytes && !answered && !request.destroyed) {
          sent += chunk.length;
          if (!request.write(chunk)) {
            request.once('drain', pump);
            return;
          }
        }
        if (!answered && !request.destroyed) request.end();
      };
      pump();
    });
  };

  test('when a 100 MB upload announces its size, then it is refused with 413 without the memory growing by anywhere near 100 MB', async () => {
    global.gc?.();
    const before = process.memoryUsage().rss;
    const answer = await upload(100 * 1024 * 1024, true);
    expect(answer.status).toBe(413);
    expect(JSON.parse(answer.body).code).toBe('PAYLOAD_TOO_LARGE');
    expect(process.memoryUsage().rss - before).toBeLessThan(40 * 1024 * 1024);
  });

  test('when a 100 MB upload comes chunked with no size, then it is cut off at 20 MB with 413 and memory stays bounded', async () => {
    const before = process.memoryUsage().rss;
    const answer = await upload(100 * 1024 * 1024, false);
    expect(answer.status).toBe(413);
    expect(process.memoryUsage().rss - before).toBeLessThan(70 * 1024 * 1024);
    expect(target.sandbox.received).toHaveLength(0);
  });

  test('when uploads already hold the whole memory budget, then the next one waits unread and gets 503 UPSTREAM_BUSY problem+json with Retry-After after the upload queue timeout', async () => {
    const token = await signToken();
    // Two uploads that announce the largest body and the budget's rest, and send nothing: together they hold the whole 20 MiB.
    const holders = [MAX_REQUEST_BYTES, 20 * 1024 * 1024 - MAX_REQUEST_BYTES].map((bytes) => {
      const holder = http.request({
        port,
        method: 'POST',
        path: '/v1/biz-tokens',
        headers: {
          Authorization: `Bearer ${token}`,
          'Content-Type': 'multipart/form-data; boundary=x',
          'Content-Length': String(bytes),
        },
      });
      holder.on('error', () => undefined);
      holder.flushHeaders();
      return holder;
    });
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(await reservedBytes()).toBe(20 * 1024 * 1024);
    const started = Date.now();
    const second = await postToken(target, validForm());
    expectProblem(second, 503, 'UPSTREAM_BUSY', null);
    expect(second.headers['retry-after']).toMatch(/^[1-9]\d*$/);
    expect(Date.now() - started).toBeGreaterThanOrEqual(550);
    for (const holder of holders) holder.destroy();
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect((await postToken(target, validForm())).status).toBe(201);
  });

  test('when a client gives up while its upload waits for memory, then its reservation is not kept once granted', async () => {
    const token = await signToken();
    const announce = (bytes: number): http.ClientRequest => {
      const request = http.request({
        port,
        method: 'POST',
        path: '/v1/biz-tokens',
        headers: {
          Authorization: `Bearer ${token}`,
          'Content-Type': 'multipart/form-data; boundary=x',
          'Content-Length': String(bytes),
        },
      });
      request.on('error', () => undefined);
      request.flushHeaders();
      return request;
    };
    const twelveMiB = 12 * 1024 * 1024;
    const holder = announce(twelveMiB);
    await new Promise((resolve) => setTimeout(resolve, 100));
    const quitter = announce(twelveMiB);
    await new Promise((resolve) => setTimeout(resolve, 100));
    // The first upload holds its 12 MiB; the second does not fit in the 20 MiB budget and waits unreserved.
    expect(await reservedBytes()).toBe(twelveMiB);
    quitter.destroy();
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(await reservedBytes()).toBe(twelveMiB);
    holder.destroy();
    await new Promise((resolve) => setTimeout(resolve, 100));
    // Both gone: nothing may stay reserved, or the budget would shrink with every phone that gives up.
    expect(await reservedBytes()).toBe(0);
  });
});
