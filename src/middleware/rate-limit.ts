import type { RequestHandler } from 'express';
import { AppError } from '../errors/app-error';
import { callerOf, contextOf } from '../http/request-context';
import type { UserRateLimiter } from '../limits/user-rate-limiter';

const POLICY_NAME = 'per-user';

/** The policy is the same for everyone, so every answer of the endpoint carries it, even a 401. */
export function announceRateLimitPolicy(limiter: UserRateLimiter): RequestHandler {
  const policy = `"${POLICY_NAME}";q=${limiter.max};w=${limiter.windowSeconds}`;
  return (_req, res, next) => {
    res.setHeader('RateLimit-Policy', policy);
    next();
  };
}

/**
 * Spends one request of the caller's window and says so in the IETF headers of
 * draft-ietf-httpapi-ratelimit-headers-10 (`RateLimit: "per-user";r=4;t=60`). A spent window does not
 * answer 429 here: the Idempotency-Key middleware decides whether a stored answer may still be replayed.
 */
export function spendRateLimit(limiter: UserRateLimiter): RequestHandler {
  return async (_req, res, next) => {
    const decision = await limiter.consume(callerOf(res).id);
    res.setHeader('RateLimit', `"${POLICY_NAME}";r=${decision.remaining};t=${decision.resetSeconds}`);
    if (!decision.allowed) {
      contextOf(res).rateLimited = new AppError(
        429,
        'RATE_LIMITED',
        `at most ${limiter.max} token requests per ${limiter.windowSeconds} s; try again later`,
        {
          retryAfterSeconds: decision.resetSeconds,
        },
      );
    }
    next();
  };
}
