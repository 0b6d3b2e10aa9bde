import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Config } from '../config/load-config';

/**
 * The Redis that instances share, when one is configured. Commands fail fast while it is away (no offline
 * queue), so every user of it falls back to its per-process twin at once, and it reconnects by itself.
 */
export interface SharedStore {
  /** Undefined when REDIS_URL is not set: every limit is per process by design. */
  redis: Redis | undefined;
  state(): 'not-configured' | 'ready' | 'unavailable';
  close(): Promise<void>;
}

export function connectSharedStore(settings: Config['redis'], log: Logger): SharedStore {
  if (settings.url === undefined) {
    return { redis: undefined, state: () => 'not-configured', close: async () => undefined };
  }
  const redis = new Redis(settings.url, {
    keyPrefix: settings.keyPrefix,
    connectTimeout: settings.connectTimeoutMs,
    commandTimeout: settings.commandTimeoutMs,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: (attempt: number) => Math.min(attempt * 100, settings.maxReconnectDelayMs),
  });
  let degraded = false;
  redis.on('ready', () => {
    if (degraded) log.warn('Redis is back: limits and idempotency are shared across instances again');
    else log.info('Redis ready: limits and idempotency are shared across instances');
    degraded = false;
  });
  redis.on('error', (error: Error) => {
    // ioredis reports every failed reconnect; the log says it once per outage.
    if (!degraded) log.warn({ err: error }, 'Redis unreachable: falling back to per-process limits and idempotency');
    degraded = true;
  });
  redis.on('end', () => {
    degraded = true;
  });
  return {
    redis,
    state: () => (redis.status === 'ready' ? 'ready' : 'unavailable'),
    close: async () => {
      try {
        await redis.quit();
      } catch {
        redis.disconnect();
      }
    },
  };
}
