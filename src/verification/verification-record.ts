import { ulid } from 'ulid';
import type { VerificationData } from '../webhooks/verification-event';

/** What is kept of a verification for VERIFICATION_RETENTION_HOURS: who may read it, and its data (no image). */
export interface VerificationRecord {
  /** The caller's pseudonymous id: the owner reads the app's view of the record. */
  ownerId: string;
  data: VerificationData;
}

/** `vf_` and a ULID: unique without coordination between instances, and sorted by time. */
export const newVerificationId = (): string => `vf_${ulid()}`;

/** Only ids of this shape are looked up; anything else is a 404 at once. */
export const isVerificationId = (text: string): boolean => /^vf_[0-9A-HJKMNP-TV-Z]{26}$/.test(text);

/** The app's answer: a verdict, never FaceID's scores, thresholds, images or request id. @see CONTRACT 7.1 */
export interface AppVerdict {
  verification_id: string;
  biz_token: string;
  verdict: VerificationData['verdict'];
  reason: string;
  verified_at: string;
}

export const appViewOf = (data: VerificationData): AppVerdict => ({
  verification_id: data.verification_id,
  biz_token: data.biz_token,
  verdict: data.verdict,
  reason: data.reason,
  verified_at: data.verified_at,
});
