import type { Redis } from 'ioredis';
import type { Logger } from 'pino';

/**
 * JSON records that expire: the issued biz_tokens and the verification records. In Redis when it is
 * configured (every instance sees every record), in the process otherwise.
 */
export interface ExpiringStore<T> {
  put(key: string, value: T, ttlMs: number): Promise<void>;
  get(key: string): Promise<T | undefined>;
}

/** Records kept at most per process; past it the oldest go first, so memory stays bounded under any load. */
const MAX_MEMORY_ENTRIES = 100_000;

export function createMemoryExpiringStore<T>(now: () => number = Date.now): ExpiringStore<T> {
  const entries = new Map<string, { value: T; expiresAt: number }>();
  return {
    async put(key, value, ttlMs) {
      entries.delete(key);
      entries.set(key, { value, expiresAt: now() + ttlMs });
      for (const oldest of entries.keys()) {
        if (entries.size <= MAX_MEMORY_ENTRIES) break;
        entries.delete(oldest);
      }
    },
    async get(key) {
      const entry = entries.get(key);
      if (entry === undefined) return undefined;
      if (entry.expiresAt > now()) return entry.value;
      entries.delete(key);
      return undefined;
    },
  };
}

export function createRedisExpiringStore<T>(redis: Redis, prefix: string): ExpiringStore<T> {
  return {
    async put(key, value, ttlMs) {
      await redis.set(prefix + key, JSON.stringify(value), 'PX', Math.max(1, Math.round(ttlMs)));
    },
    async get(key) {
      const text = await redis.get(prefix + key);
      return text === null ? undefined : (JSON.parse(text) as T);
    },
  };
}

/**
 * Redis first, the process's own copy as well: every record is also written locally, so while Redis is away
 * this instance still knows what it wrote (other instances do not, which the runbook says).
 */
export function createResilientExpiringStore<T>(
  shared: ExpiringStore<T> | undefined,
  sharedIsReady: () => boolean,
  log: Logger,
): ExpiringStore<T> {
  const local = createMemoryExpiringStore<T>();
  if (shared === undefined) return local;
  return {
    async put(key, value, ttlMs) {
      await local.put(key, value, ttlMs);
      if (!sharedIsReady()) return;
      try {
        await shared.put(key, value, ttlMs);
      } catch (error) {
        log.warn({ err: error }, 'could not share a record through Redis; this instance keeps it');
      }
    },
    async get(key) {
      if (sharedIsReady()) {
        try {
          const value = await shared.get(key);
          if (value !== undefined) return value;
        } catch {
          // Answered from this instance's copy below.
        }
      }
      return local.get(key);
    },
  };
}
