import type { ComparisonType, LivenessType } from '../faceid/parameters';
import { BIZ_TOKEN_LIFETIME_MS } from '../faceid/parameters';

/** What the sandbox's verify needs to know of a biz_token its get_biz_token issued. */
export interface IssuedToken {
  livenessType: LivenessType;
  comparisonType: ComparisonType;
  /** The `biz_no` given at get_biz_token, or "": verify echoes it. */
  bizNo: string;
  /** `verbose=1` was sent: verify then answers `verification`. */
  verbose: boolean;
  imageRef1: boolean;
  imageRef2: boolean;
  /** Unix milliseconds. */
  expiresAt: number;
  verified: boolean;
}

export type NewIssuedToken = Omit<IssuedToken, 'expiresAt' | 'verified'>;

/** Enough for any test or development session; a bound so a load test cannot grow the sandbox without end. */
export const MAX_ISSUED_TOKENS = 100_000;

/** The biz_tokens issued within the last hour, at most `limit` of them, the oldest dropped first. */
export class IssuedTokens {
  private readonly tokens = new Map<string, IssuedToken>();
  private readonly limit: number;
  private readonly now: () => number;

  constructor(limit = MAX_ISSUED_TOKENS, now: () => number = Date.now) {
    this.limit = limit;
    this.now = now;
  }

  remember(bizToken: string, token: NewIssuedToken): void {
    const now = this.now();
    this.tokens.set(bizToken, { ...token, expiresAt: now + BIZ_TOKEN_LIFETIME_MS, verified: false });
    // One lifetime for all, so insertion order is expiry order: the expired and the oldest are at the front.
    for (const [key, held] of this.tokens) {
      if (this.tokens.size <= this.limit && held.expiresAt > now) break;
      this.tokens.delete(key);
    }
  }

  /** The token while it is within its hour, verified or not; undefined when never issued or expired. */
  find(bizToken: string): IssuedToken | undefined {
    const token = this.tokens.get(bizToken);
    return token !== undefined && token.expiresAt > this.now() ? token : undefined;
  }

  markVerified(bizToken: string): void {
    const token = this.tokens.get(bizToken);
    if (token !== undefined) token.verified = true;
  }

  get size(): number {
    return this.tokens.size;
  }
}
