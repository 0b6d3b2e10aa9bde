/** A finished answer kept for replay under an Idempotency-Key. */
export interface StoredResponse {
  status: number;
  body: Record<string, unknown>;
}

/** A record whose request has been answered. */
export interface CompletedRecord {
  fingerprint: string;
  response: StoredResponse;
}

export type ClaimResult =
  /** Nobody holds the key: the claimant makes the upstream call and must complete or release. */
  | { kind: 'claimed'; owner: string }
  | { kind: 'replay'; response: StoredResponse }
  /** The key was used with another body. */
  | { kind: 'mismatch' }
  /** Another request with the same key and body is being answered right now. */
  | { kind: 'in-progress' };

/**
 * Idempotency records keyed by (user, key). One interface, a memory and a Redis implementation, so the
 * use case does not know which it talks to.
 */
export interface IdempotencyStore {
  /** The record as it stands, without claiming it. */
  find(key: string): Promise<{ fingerprint: string; response: StoredResponse | undefined } | undefined>;
  claim(key: string, fingerprint: string, pendingTtlMs: number): Promise<ClaimResult>;
  complete(key: string, owner: string, fingerprint: string, response: StoredResponse, ttlMs: number): Promise<void>;
  /** Gives the key back without an answer (5xx outcomes are not stored). */
  release(key: string, owner: string): Promise<void>;
}
