import type { RequestHandler } from 'express';
import type { Caller } from '../auth/authenticate-caller';
import { AppError } from '../errors/app-error';
import type { UserRateLimiter } from '../limits/user-rate-limiter';
import type { Metrics } from '../observability/metrics';

const POLICY_NAME = 'per-user';

/** The policy is the same for everyone, so every answer of the endpoint carries it, even a 401. */
export const rateLimitPolicy = (limiter: UserRateLimiter): string => `"${POLICY_NAME}";q=${limiter.max};w=${limiter.windowSeconds}`;

/**
 * Spends one request of the caller's window and says so in the IETF headers of
 * draft-ietf-httpapi-ratelimit-headers-10: `RateLimit-Policy: "per-user";q=5;w=60` and
 * `RateLimit: "per-user";r=4;t=60`.
 */
export function rateLimit(limiter: UserRateLimiter, metrics: Metrics): RequestHandler {
  return async (_req, res, next) => {
    const caller = res.locals.caller as Caller;
    const decision = await limiter.consume(caller.id);
    res.setHeader('RateLimit', `"${POLICY_NAME}";r=${decision.remaining};t=${decision.resetSeconds}`);
    if (!decision.allowed) {
      metrics.rateLimitRejections.inc();
      throw new AppError(429, 'RATE_LIMITED', `at most ${limiter.max} token requests per ${limiter.windowSeconds} s; try again later`, {
        retryAfterSeconds: decision.resetSeconds,
      });
    }
    next();
  };
}
