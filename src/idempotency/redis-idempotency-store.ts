import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { ClaimResult, IdempotencyStore, StoredResponse } from './idempotency-store';

interface Record {
  fingerprint: string;
  owner?: string;
  response?: StoredResponse;
}

/**
 * Completes or releases only while the caller still owns the pending record: a claim that outlived its TTL
 * and was taken over must not overwrite or delete the newer owner's record.
 */
const OWNED_REPLACE = `
local current = redis.call('get', KEYS[1])
if current and cjson.decode(current).owner ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('del', KEYS[1]) else redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return 1`;

const KEY_PREFIX = 'idem:';

/** Records shared by every instance; SET NX makes two concurrent claims of one key resolve to one owner. */
export function createRedisIdempotencyStore(redis: Redis): IdempotencyStore {
  const replaceIfOwner = (key: string, owner: string, value: string, ttlMs: number): Promise<unknown> =>
    redis.eval(OWNED_REPLACE, 1, KEY_PREFIX + key, owner, value, String(Math.max(1, Math.round(ttlMs))));

  const read = async (key: string): Promise<Record | undefined> => {
    const text = await redis.get(KEY_PREFIX + key);
    return text === null ? undefined : (JSON.parse(text) as Record);
  };

  return {
    async find(key) {
      const record = await read(key);
      return record === undefined ? undefined : { fingerprint: record.fingerprint, response: record.response };
    },
    async claim(key, fingerprint, pendingTtlMs): Promise<ClaimResult> {
      const owner = randomUUID();
      const created = await redis.set(
        KEY_PREFIX + key,
        JSON.stringify({ fingerprint, owner }),
        'PX',
        pendingTtlMs,
        'NX',
      );
      if (created === 'OK') return { kind: 'claimed', owner };
      const record = await read(key);
      // Expired between the two commands: answered as in progress, so the caller's poll claims it again.
      if (record === undefined) return { kind: 'in-progress' };
      if (record.fingerprint !== fingerprint) return { kind: 'mismatch' };
      return record.response === undefined ? { kind: 'in-progress' } : { kind: 'replay', response: record.response };
    },
    async complete(key, owner, fingerprint, response, ttlMs) {
      await replaceIfOwner(key, owner, JSON.stringify({ fingerprint, response }), ttlMs);
    },
    async release(key, owner) {
      await replaceIfOwner(key, owner, '', 0);
    },
  };
}
