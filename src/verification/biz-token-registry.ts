import { createHash } from 'node:crypto';
import type { ComparisonType, LivenessType } from '../faceid/parameters';
import type { ExpiringStore } from '../storage/expiring-store';

/** What the service remembers of a biz_token it issued, for the token's hour. @see CONTRACT section 7.1 */
export interface IssuedBizToken {
  /** The caller's pseudonymous id: only this caller may verify the token. */
  ownerId: string;
  /** The JWT `sub`, for the verification record and the webhook. */
  subject: string | undefined;
  livenessType: LivenessType;
  comparisonType: ComparisonType;
  bizNo: string;
  expiresAt: string;
}

export interface BizTokenRegistry {
  remember(bizToken: string, token: IssuedBizToken): Promise<void>;
  /** The token if this caller was issued it and its hour is not over; unknown, expired and foreign alike: undefined. */
  findOwned(bizToken: string, callerId: string): Promise<IssuedBizToken | undefined>;
}

/** Stored under a hash: a key listing of the store shows no usable token. */
export const bizTokenKey = (bizToken: string): string => createHash('sha256').update(bizToken).digest('hex');

export function createBizTokenRegistry(store: ExpiringStore<IssuedBizToken>): BizTokenRegistry {
  return {
    async remember(bizToken, token) {
      await store.put(bizTokenKey(bizToken), token, Date.parse(token.expiresAt) - Date.now());
    },
    async findOwned(bizToken, callerId) {
      const token = await store.get(bizTokenKey(bizToken));
      if (token === undefined || token.ownerId !== callerId || Date.parse(token.expiresAt) <= Date.now()) {
        return undefined;
      }
      return token;
    },
  };
}
