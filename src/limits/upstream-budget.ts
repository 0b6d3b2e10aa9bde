import type { Logger } from 'pino';
import { type RateLimiterAbstract, RateLimiterMemory, RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';
import { AppError } from '../errors/app-error';
import type { SharedStore } from './shared-store';

/** The operator's ceiling on FaceID calls per UTC day, so a runaway client cannot run up the bill. */
export interface UpstreamBudget {
  /** Spends one call, or throws 503 UPSTREAM_BUSY once the day's budget is gone. */
  take(): Promise<void>;
}

const DAY_MS = 24 * 60 * 60 * 1000;

export function createUpstreamBudget(perDay: number | undefined, store: SharedStore, log: Logger): UpstreamBudget {
  if (perDay === undefined) return { take: async () => undefined };
  // One key per UTC day that outlives the day, so the count never restarts mid-day.
  const options = { keyPrefix: 'budget', points: perDay, duration: (2 * DAY_MS) / 1000 };
  const memory = new RateLimiterMemory(options);
  const limiter: RateLimiterAbstract =
    store.redis === undefined
      ? memory
      : new RateLimiterRedis({
          ...options,
          storeClient: store.redis,
          rejectIfRedisNotReady: true,
          insuranceLimiter: memory,
        });
  let warnedFor = '';

  return {
    async take() {
      const now = Date.now();
      const day = new Date(now).toISOString().slice(0, 10);
      try {
        await limiter.consume(day, 1);
      } catch (rejection) {
        if (!(rejection instanceof RateLimiterRes)) throw rejection;
        const retryAfterSeconds = Math.max(1, Math.ceil((DAY_MS - (now % DAY_MS)) / 1000));
        if (warnedFor !== day) {
          warnedFor = day;
          log.warn({ budget: perDay, day }, 'FACEID_DAILY_BUDGET spent: token requests get 503 until the next UTC day');
        }
        throw new AppError(503, 'UPSTREAM_BUSY', "the service's daily FaceID budget is spent; try again tomorrow", {
          retryAfterSeconds,
          logContext: { reason: 'daily budget' },
        });
      }
    },
  };
}
