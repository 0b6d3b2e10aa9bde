import type { AppError } from '../errors/app-error';
import type { IdempotencyStore, StoredResponse } from './idempotency-store';

const POLL_MS = 50;

/** This request owns the record: it makes the upstream call, then completes or releases the record. */
export interface HeldClaim {
  kind: 'claimed';
  key: string;
  owner: string;
  fingerprint: string;
}

export interface ClaimRefusals {
  /** The record was made by a different request. */
  mismatch: () => AppError;
  /** Another request still holds the record after the whole wait. */
  stillInProgress: () => AppError;
}

/**
 * Claims a record, or waits while a twin request holds it: the twin's stored response is then replayed, so
 * concurrent duplicates make one upstream call. A twin that fails releases the record and the wait claims it.
 */
export async function claimRecord(
  store: IdempotencyStore,
  key: string,
  fingerprint: string,
  waitMs: number,
  refusals: ClaimRefusals,
): Promise<HeldClaim | { kind: 'replay'; response: StoredResponse }> {
  const giveUpAt = Date.now() + waitMs;
  for (;;) {
    const result = await store.claim(key, fingerprint, waitMs);
    switch (result.kind) {
      case 'claimed':
        return { kind: 'claimed', key, owner: result.owner, fingerprint };
      case 'replay':
        return result;
      case 'mismatch':
        throw refusals.mismatch();
      case 'in-progress':
        if (Date.now() >= giveUpAt) throw refusals.stillInProgress();
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  }
}
