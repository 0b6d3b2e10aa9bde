import { type RateLimiterAbstract, RateLimiterMemory, RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';
import type { Config } from '../config/load-config';
import type { SharedStore } from './shared-store';

export interface RateDecision {
  allowed: boolean;
  remaining: number;
  /** Seconds until the window frees a request. */
  resetSeconds: number;
}

/** Token requests per user per window: exact across instances through Redis, per process without it. */
export interface UserRateLimiter {
  readonly max: number;
  readonly windowSeconds: number;
  consume(callerId: string): Promise<RateDecision>;
  /** Gives a request back (an idempotent replay costs no FaceID call). */
  refund(callerId: string): Promise<void>;
}

export function createUserRateLimiter(settings: Config['rateLimit'], store: SharedStore): UserRateLimiter {
  const options = { keyPrefix: 'rate', points: settings.max, duration: settings.windowSeconds };
  const memory = new RateLimiterMemory(options);
  // Redis does the counting atomically (one Lua script), so a burst spread over instances cannot overshoot;
  // while Redis is away the insurance limiter keeps counting per process.
  const limiter: RateLimiterAbstract =
    store.redis === undefined
      ? memory
      : new RateLimiterRedis({
          ...options,
          storeClient: store.redis,
          rejectIfRedisNotReady: true,
          insuranceLimiter: memory,
        });

  return {
    max: settings.max,
    windowSeconds: settings.windowSeconds,
    async consume(callerId) {
      try {
        const result = await limiter.consume(callerId, 1);
        return {
          allowed: true,
          remaining: result.remainingPoints,
          resetSeconds: Math.ceil(result.msBeforeNext / 1000),
        };
      } catch (rejection) {
        if (!(rejection instanceof RateLimiterRes)) throw rejection;
        return { allowed: false, remaining: 0, resetSeconds: Math.max(1, Math.ceil(rejection.msBeforeNext / 1000)) };
      }
    },
    async refund(callerId) {
      await limiter.reward(callerId, 1);
    },
  };
}
