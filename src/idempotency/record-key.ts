import { createHash } from 'node:crypto';

/** Records are per user: the same key from two users names two records. The key itself is hashed. */
export const idempotencyRecordKey = (callerId: string, idempotencyKey: string): string =>
  `${callerId}:${createHash('sha256').update(idempotencyKey).digest('hex')}`;
