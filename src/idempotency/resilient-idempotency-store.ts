import type { IdempotencyStore } from './idempotency-store';

/**
 * Redis when it answers, the per-process store when it does not: an outage narrows idempotency to one
 * instance instead of failing the request.
 */
export function createResilientIdempotencyStore(
  shared: IdempotencyStore,
  local: IdempotencyStore,
  sharedIsReady: () => boolean,
): IdempotencyStore {
  const pick = (): IdempotencyStore => (sharedIsReady() ? shared : local);
  const withFallback = async <T>(call: (store: IdempotencyStore) => Promise<T>): Promise<T> => {
    const store = pick();
    try {
      return await call(store);
    } catch (error) {
      if (store === local) throw error;
      return call(local);
    }
  };
  return {
    find: (key) => withFallback((store) => store.find(key)),
    claim: (key, fingerprint, ttl) => withFallback((store) => store.claim(key, fingerprint, ttl)),
    complete: (key, owner, fingerprint, response, ttl) =>
      withFallback((store) => store.complete(key, owner, fingerprint, response, ttl)),
    release: (key, owner) => withFallback((store) => store.release(key, owner)),
  };
}
