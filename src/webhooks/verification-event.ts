import type { VerifyAnswer } from '../faceid/faceid-client';
import type { Verdict } from '../verification/verdict';

/**
 * The whole result of one verification, as the operator's backend sees it: the webhook's `data`, and the
 * body of `GET /v1/verifications/{id}` for a `verifications:read` caller. Never holds the image.
 * @see CONTRACT section 7.3
 */
export interface VerificationData {
  verification_id: string;
  /** The JWT `sub`; null under AUTH_MODE=none. */
  user: string | null;
  biz_token: string;
  biz_no: string;
  liveness_type: string;
  /** FaceID's string, "0" or "1". */
  comparison_type: string;
  verdict: Verdict;
  reason: string;
  result_code: number;
  result_message: string;
  verification?: VerifyAnswer['verification'];
  attack_result?: VerifyAnswer['attackResult'];
  faceid_request_id: string | null;
  verified_at: string;
}

export const VERIFICATION_COMPLETED = 'verification.completed';

/**
 * The webhook body. Built once per event and kept as text, so every attempt signs and sends the same bytes.
 * `image_best` only when the operator asked for it.
 */
export function verificationEventBody(data: VerificationData, imageBest: string | undefined): string {
  return JSON.stringify({
    type: VERIFICATION_COMPLETED,
    timestamp: data.verified_at,
    data: imageBest === undefined ? data : { ...data, image_best: imageBest },
  });
}
