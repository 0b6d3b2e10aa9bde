import type { Caller } from '../auth/authenticate-caller';
import {
  type AppVerdict,
  appViewOf,
  isVerificationId,
  type VerificationRecord,
} from '../verification/verification-record';
import type { VerificationData } from '../webhooks/verification-event';

/** The JWT scope of the operator's backend. @see CONTRACT section 7.3 (Pull) */
export const READ_SCOPE = 'verifications:read';

export interface VerificationReader {
  get(verificationId: string): Promise<VerificationRecord | undefined>;
}

/**
 * The backend (scope `verifications:read`) reads the whole record, the owner the app's view; anyone else, an
 * id of another shape, and a record past its retention read nothing.
 */
export async function readVerification(
  caller: Caller,
  verificationId: string,
  records: VerificationReader,
): Promise<VerificationData | AppVerdict | undefined> {
  if (!isVerificationId(verificationId)) return undefined;
  const record = await records.get(verificationId);
  if (record === undefined) return undefined;
  if (caller.scopes.has(READ_SCOPE)) return record.data;
  return record.ownerId === caller.id ? appViewOf(record.data) : undefined;
}
