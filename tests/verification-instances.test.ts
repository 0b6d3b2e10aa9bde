import { Redis } from 'ioredis';
import type { Sandbox } from '../src/sandbox/sandbox-server';
import { type ChildService, startChildService, targetOf } from './helpers/child-service';
import {
  expectProblem,
  SANDBOX_KEY,
  SANDBOX_SECRET,
  startTestSandbox,
  TEST_JWT_SECRET,
  uniquePrefix,
} from './helpers/test-service';
import { getVerification, issueToken, makePackage, postVerification, VERIFICATION_ID } from './helpers/verification';

/**
 * CONTRACT section 7.1 across instances: two real service processes (the built dist/server.js) on one Redis
 * share the issued biz_tokens (ownership) and the first verdict of each (once), so a token issued at one
 * instance is verified at the other, replayed at either, and never costs a second FaceID verify call.
 */

const REDIS_URL = 'redis://127.0.0.1:6379';
const PREFIX = uniquePrefix();

let sandbox: Sandbox;
let instances: ChildService[] = [];

beforeAll(async () => {
  sandbox = await startTestSandbox();
  const env = {
    REDIS_URL,
    REDIS_KEY_PREFIX: PREFIX,
    AUTH_JWT_SECRET: TEST_JWT_SECRET,
    UUID_SALT: 'verification-instances-salt-0123456789',
    RATE_LIMIT_MAX: '1000',
    FACEID_BASE_URL: sandbox.url,
    FACEID_API_KEY: SANDBOX_KEY,
    FACEID_API_SECRET: SANDBOX_SECRET,
    FACEID_TIMEOUT_MS: '5000',
  };
  instances = await Promise.all([startChildService(env), startChildService(env)]);
  await Promise.all(instances.map((instance) => waitUntilRedisReady(instance)));
}, 30_000);

afterAll(async () => {
  await Promise.all(instances.map((instance) => instance.stop('SIGKILL')));
  sandbox?.setScenario(undefined);
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

/** Until the instance uses the shared Redis (before that it would fall back to its own memory). */
async function waitUntilRedisReady(instance: ChildService): Promise<void> {
  const deadline = Date.now() + 5_000;
  for (;;) {
    const response = await fetch(`${instance.url}/readyz`);
    const body = (await response.json()) as { checks?: { redis?: string } };
    if (body.checks?.redis === 'ok') return;
    if (Date.now() > deadline)
      throw new Error(`${instance.url} never reached Redis: ${JSON.stringify(body)}\n${instance.output()}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function twoInstances(): [ChildService, ChildService] {
  const [a, b] = instances;
  if (a === undefined || b === undefined) throw new Error('two instances expected');
  return [a, b];
}

describe('verifications across two service processes on one Redis', () => {
  test('when a token issued by instance A is verified at instance B, then B answers 201, a replay at A answers the same body with Idempotent-Replayed: true, and FaceID saw one verify call', async () => {
    const [a, b] = twoInstances();
    const token = await issueToken(targetOf(a), 'instances-user-x');
    const form = { bizToken: token.bizToken, megliveData: makePackage({ sandbox }, token.bizToken) };
    const before = sandbox.verifyCount();

    const first = await postVerification(targetOf(b), token.authorization, form);
    expect(first.status).toBe(201);
    const body = first.body as { verification_id: string; biz_token: string; verdict: string };
    expect(body).toMatchObject({ biz_token: token.bizToken, verdict: 'passed', reason: 'SUCCESS' });
    expect(body.verification_id).toMatch(VERIFICATION_ID);
    expect(first.headers['idempotent-replayed']).toBeUndefined();

    const replay = await postVerification(targetOf(a), token.authorization, form);
    expect(replay.status).toBe(201);
    expect(replay.headers['idempotent-replayed']).toBe('true');
    expect(replay.body).toEqual(first.body);
    expect(sandbox.verifyCount() - before).toBe(1);

    // The record is shared too: the owner reads the app's view at the other instance.
    const read = await getVerification(targetOf(a), token.authorization, body.verification_id);
    expect(read.status).toBe(200);
    expect(read.body).toEqual(first.body);
  });

  test('when a token issued by instance A to user X is presented at instance B by user Y, then B answers 404 BIZ_TOKEN_NOT_FOUND without a FaceID call, and X can still verify it', async () => {
    const [a, b] = twoInstances();
    const token = await issueToken(targetOf(a), 'instances-owner-x');
    const form = { bizToken: token.bizToken, megliveData: makePackage({ sandbox }, token.bizToken) };
    const before = sandbox.verifyCount();

    const foreign = await postVerification(targetOf(b), 'instances-other-y', form);
    expectProblem(foreign, 404, 'BIZ_TOKEN_NOT_FOUND');
    expect(sandbox.verifyCount() - before).toBe(0);

    const owner = await postVerification(targetOf(b), token.authorization, form);
    expect(owner.status).toBe(201);
    expect(sandbox.verifyCount() - before).toBe(1);
  });

  test('when one token is verified concurrently at both instances, then FaceID gets one verify call and both answer 201 with the same body', async () => {
    const [a, b] = twoInstances();
    const token = await issueToken(targetOf(a), 'instances-concurrent-user');
    const form = { bizToken: token.bizToken, megliveData: makePackage({ sandbox }, token.bizToken) };
    const before = sandbox.verifyCount();
    // A slow FaceID keeps the first call in flight while the other instance's request arrives.
    sandbox.setScenario({ outcome: undefined, times: undefined, latencyMs: 500 });
    try {
      const [atA, atB] = await Promise.all([
        postVerification(targetOf(a), token.authorization, form),
        postVerification(targetOf(b), token.authorization, form),
      ]);
      expect([atA.status, atB.status]).toEqual([201, 201]);
      expect(atA.body).toEqual(atB.body);
      expect((atA.body as { verification_id: string }).verification_id).toMatch(VERIFICATION_ID);
      expect(sandbox.verifyCount() - before).toBe(1);
    } finally {
      sandbox.setScenario(undefined);
    }
  });
});
