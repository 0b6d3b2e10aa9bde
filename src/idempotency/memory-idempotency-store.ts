import { randomUUID } from 'node:crypto';
import type { ClaimResult, IdempotencyStore, StoredResponse } from './idempotency-store';

interface Entry {
  fingerprint: string;
  owner: string | undefined;
  response: StoredResponse | undefined;
  expiresAt: number;
}

/** Records kept at most; past it the oldest go first, so memory stays bounded under any load. */
const MAX_ENTRIES = 100_000;

/** Per-process records: the store without Redis, and the fallback while Redis is away. */
export function createMemoryIdempotencyStore(now: () => number = Date.now): IdempotencyStore {
  const entries = new Map<string, Entry>();

  const live = (key: string): Entry | undefined => {
    const entry = entries.get(key);
    if (entry !== undefined && entry.expiresAt <= now()) {
      entries.delete(key);
      return undefined;
    }
    return entry;
  };
  const put = (key: string, entry: Entry): void => {
    entries.delete(key);
    entries.set(key, entry);
    for (const oldest of entries.keys()) {
      if (entries.size <= MAX_ENTRIES) break;
      entries.delete(oldest);
    }
  };

  return {
    async find(key) {
      const entry = live(key);
      return entry === undefined ? undefined : { fingerprint: entry.fingerprint, response: entry.response };
    },
    async claim(key, fingerprint, pendingTtlMs): Promise<ClaimResult> {
      const entry = live(key);
      if (entry === undefined) {
        const owner = randomUUID();
        put(key, { fingerprint, owner, response: undefined, expiresAt: now() + pendingTtlMs });
        return { kind: 'claimed', owner };
      }
      if (entry.fingerprint !== fingerprint) return { kind: 'mismatch' };
      return entry.response === undefined ? { kind: 'in-progress' } : { kind: 'replay', response: entry.response };
    },
    async complete(key, owner, fingerprint, response, ttlMs) {
      const entry = live(key);
      if (entry !== undefined && entry.owner !== owner) return;
      put(key, { fingerprint, owner: undefined, response, expiresAt: now() + ttlMs });
    },
    async release(key, owner) {
      if (live(key)?.owner === owner) entries.delete(key);
    },
  };
}
