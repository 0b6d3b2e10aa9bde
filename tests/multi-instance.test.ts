import { createHmac } from 'node:crypto';
import { Redis } from 'ioredis';
import type { Sandbox } from '../src/sandbox/sandbox-server';
import { jpeg } from './fixtures/images';
import { type ChildService, startChildService } from './helpers/child-service';
import {
  SANDBOX_KEY,
  SANDBOX_SECRET,
  signToken,
  startTestSandbox,
  TEST_JWT_SECRET,
  uniquePrefix,
} from './helpers/test-service';

/**
 * Exact across instances: two real service processes (the built dist/server.js) on one Redis
 * never let a user through more than RATE_LIMIT_MAX, even when a concurrent burst is spread over both.
 */

const REDIS_URL = 'redis://127.0.0.1:6379';
const PREFIX = uniquePrefix();
const UUID_SALT = 'multi-instance-test-salt-0123456789';
const LIMIT = 5;

let sandbox: Sandbox;
let instances: ChildService[] = [];

beforeAll(async () => {
  sandbox = await startTestSandbox();
  const env = {
    REDIS_URL,
    REDIS_KEY_PREFIX: PREFIX,
    AUTH_JWT_SECRET: TEST_JWT_SECRET,
    UUID_SALT,
    RATE_LIMIT_MAX: String(LIMIT),
    RATE_LIMIT_WINDOW_SECONDS: '60',
    FACEID_BASE_URL: sandbox.url,
    FACEID_API_KEY: SANDBOX_KEY,
    FACEID_API_SECRET: SANDBOX_SECRET,
    FACEID_TIMEOUT_MS: '5000',
  };
  instances = await Promise.all([startChildService(env), startChildService(env)]);
  // Before Redis is ready each process counts on its own (the insurance limiter); the test is about the shared count.
  await Promise.all(instances.map((instance) => waitUntilReady(instance)));
}, 30_000);

afterAll(async () => {
  // Still running only if a test failed before the SIGTERM test: make sure nothing outlives the file.
  await Promise.all(instances.map((instance) => instance.stop('SIGKILL')));
  await sandbox?.close();
  const redis = new Redis(REDIS_URL, { lazyConnect: true });
  try {
    await redis.connect();
    const keys = await redis.keys(`${PREFIX}*`);
    if (keys.length > 0) await redis.del(...keys);
  } finally {
    redis.disconnect();
  }
});

async function waitUntilReady(instance: ChildService): Promise<void> {
  const deadline = Date.now() + 5_000;
  for (;;) {
    const response = await fetch(`${instance.url}/readyz`);
    const body = (await response.json()) as { status: string };
    if (body.status === 'ready') return;
    if (Date.now() > deadline)
      throw new Error(`${instance.url} never became ready: ${JSON.stringify(body)}\n${instance.output()}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** The `uuid` the service derives from a JWT subject (what the sandbox receives for comparison_type 0). */
const uuidOf = (sub: string): string => createHmac('sha256', UUID_SALT).update(`sub:${sub}`).digest('hex');

/** The answer's status, or the transport error's code, so a failed request shows up in the tally. */
async function requestToken(instance: ChildService, token: string): Promise<number | string> {
  const form = new FormData();
  form.append('comparison_type', '0');
  form.append('liveness_type', 'meglive');
  form.append('image_ref1', new Blob([new Uint8Array(jpeg(64, 64))], { type: 'image/jpeg' }), 'image_ref1.jpg');
  try {
    const response = await fetch(`${instance.url}/v1/biz-tokens`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${token}` },
      body: form,
    });
    await response.arrayBuffer();
    return response.status;
  } catch (error) {
    const cause = (error as { cause?: { code?: unknown } }).cause;
    return `transport error ${String(cause?.code ?? (error as Error).message)}`;
  }
}

function tally(statuses: Array<number | string>): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const status of statuses) counts[status] = (counts[status] ?? 0) + 1;
  return counts;
}

describe('two service processes on one Redis', () => {
  it('when a burst of 30 concurrent requests per user is spread over both instances, then each user gets exactly 5 tokens and 25 refusals, and the sandbox sees exactly 5 calls per user', async () => {
    const [a, b] = instances;
    if (a === undefined || b === undefined) throw new Error('two instances expected');
    const users = ['burst-user-1', 'burst-user-2'];
    const tokens = await Promise.all(users.map((sub) => signToken({ sub })));
    const before = sandbox.received.length;

    const burst: Array<Promise<{ user: number; status: number | string }>> = [];
    for (let i = 0; i < 30; i++) {
      for (let user = 0; user < users.length; user++) {
        // Alternate the instances, and offset the second user so each instance gets both users.
        const instance = (i + user) % 2 === 0 ? a : b;
        burst.push(requestToken(instance, tokens[user] ?? '').then((status) => ({ user, status })));
      }
    }
    const results = await Promise.all(burst);

    for (let user = 0; user < users.length; user++) {
      const statuses = results.filter((result) => result.user === user).map((result) => result.status);
      expect(statuses).toHaveLength(30);
      expect(tally(statuses)).toEqual({ 201: LIMIT, 429: 30 - LIMIT });
    }
    const upstream = sandbox.received.slice(before);
    expect(upstream).toHaveLength(2 * LIMIT);
    for (const sub of users) {
      expect(upstream.filter((request) => request.fields.uuid?.[0] === uuidOf(sub))).toHaveLength(LIMIT);
    }
  });

  it('when both instances get SIGTERM, then both exit with code 0', async () => {
    const codes = await Promise.all(instances.map((instance) => instance.stop('SIGTERM')));
    expect(codes).toEqual([0, 0]);
    for (const instance of instances) expect(instance.output()).toContain('"stopped"');
  });
});
