import type { ServerResponse } from 'node:http';
import type { Caller } from '../auth/authenticate-caller';
import { AppError } from '../errors/app-error';
import type { AnsweredRecord, IdempotencyStore } from '../idempotency/idempotency-store';
import { idempotencyRecordKey } from '../idempotency/record-key';
import type { UserRateLimiter } from '../limits/user-rate-limiter';

const POLICY_NAME = 'per-user';

/** The policy is the same for everyone, so every answer of the endpoint carries it, even a 401. */
export const rateLimitPolicy = (limiter: UserRateLimiter): string => `"${POLICY_NAME}";q=${limiter.max};w=${limiter.windowSeconds}`;

/**
 * Spends one request of the caller's window and says so in the IETF headers of
 * draft-ietf-httpapi-ratelimit-headers-10: `RateLimit-Policy: "per-user";q=5;w=60` and
 * `RateLimit: "per-user";r=4;t=60`. Returns the 429 when the window is spent; the route decides whether a
 * stored answer may still be replayed.
 */
export async function spendRequest(limiter: UserRateLimiter, caller: Caller, res: ServerResponse): Promise<AppError | undefined> {
  const decision = await limiter.consume(caller.id);
  res.setHeader('RateLimit', `"${POLICY_NAME}";r=${decision.remaining};t=${decision.resetSeconds}`);
  if (decision.allowed) return undefined;
  return new AppError(429, 'RATE_LIMITED', `at most ${limiter.max} token requests per ${limiter.windowSeconds} s; try again later`, {
    retryAfterSeconds: decision.resetSeconds,
  });
}

/**
 * A refused caller's body is read only when its Idempotency-Key already holds an answer, which is returned
 * for the use case to replay: otherwise the 429 goes out before a byte of the upload is taken in.
 */
export async function answeredOrRefuse(store: IdempotencyStore, caller: Caller, key: string, refusal: AppError): Promise<AnsweredRecord> {
  const record = await store.find(idempotencyRecordKey(caller.id, key));
  if (record?.answer === undefined) throw refusal;
  return { fingerprint: record.fingerprint, answer: record.answer };
}
