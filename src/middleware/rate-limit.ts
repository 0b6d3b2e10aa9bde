import type { RequestHandler } from 'express';
import type { Caller } from '../auth/authenticate-caller';
import { AppError } from '../errors/app-error';
import type { IdempotencyStore } from '../idempotency/idempotency-store';
import { idempotencyRecordKey } from '../idempotency/record-key';
import type { UserRateLimiter } from '../limits/user-rate-limiter';

const POLICY_NAME = 'per-user';

/** The policy is the same for everyone, so every answer of the endpoint carries it, even a 401. */
export const rateLimitPolicy = (limiter: UserRateLimiter): string => `"${POLICY_NAME}";q=${limiter.max};w=${limiter.windowSeconds}`;

/**
 * Spends one request of the caller's window and says so in the IETF headers of
 * draft-ietf-httpapi-ratelimit-headers-10: `RateLimit-Policy: "per-user";q=5;w=60` and
 * `RateLimit: "per-user";r=4;t=60`. A refused request that carries an Idempotency-Key goes on with the
 * refusal in `res.locals.rateLimitRefusal`: if it repeats a request already answered, the phone gets its
 * stored answer back instead of a 429 (the use case decides, once it knows the body).
 */
export function rateLimit(limiter: UserRateLimiter): RequestHandler {
  return async (req, res, next) => {
    const caller = res.locals.caller as Caller;
    const decision = await limiter.consume(caller.id);
    res.setHeader('RateLimit', `"${POLICY_NAME}";r=${decision.remaining};t=${decision.resetSeconds}`);
    if (!decision.allowed) {
      const refusal = new AppError(429, 'RATE_LIMITED', `at most ${limiter.max} token requests per ${limiter.windowSeconds} s; try again later`, {
        retryAfterSeconds: decision.resetSeconds,
      });
      if (req.headers['idempotency-key'] === undefined) throw refusal;
      res.locals.rateLimitRefusal = refusal;
    }
    next();
  };
}

/**
 * A refused caller's body is read only when its Idempotency-Key already holds an answer: otherwise the 429
 * goes out before a byte of the upload is taken in.
 */
export function refuseUnlessReplayable(store: IdempotencyStore): RequestHandler {
  return async (_req, res, next) => {
    const refusal = res.locals.rateLimitRefusal as AppError | undefined;
    if (refusal !== undefined) {
      const key = res.locals.idempotencyKey as string | undefined;
      const record = key === undefined ? undefined : await store.find(idempotencyRecordKey((res.locals.caller as Caller).id, key));
      if (record?.answer === undefined) throw refusal;
    }
    next();
  };
}
