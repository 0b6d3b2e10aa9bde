import { z } from 'zod';
import type { VerifyAnswer } from './faceid-client';

const comparison = z.object({
  confidence: z.number(),
  thresholds: z.object({
    '1e-3': z.number().optional(),
    '1e-4': z.number().optional(),
    '1e-5': z.number().optional(),
    '1e-6': z.number().optional(),
  }),
});

/**
 * The verify answer's shape. A part that does not fit is read as absent, which the verdict's policy treats
 * as the cautious case (no comparison, no attack judgement).
 * @see ../shared/seed/App-Verify.md (Answer)
 */
const VERIFY_ANSWER = z.object({
  request_id: z.string().optional().catch(undefined),
  biz_no: z.string().catch(''),
  result_code: z.number().int(),
  result_message: z.string(),
  verification: z
    .object({ idcard: comparison.optional(), ref1: comparison.optional(), ref2: comparison.optional() })
    .optional()
    .catch(undefined),
  attack_result: z
    .object({ score: z.number(), threshold: z.number(), result: z.boolean() })
    .optional()
    .catch(undefined),
  images: z
    .object({ image_best: z.string().optional().catch(undefined) })
    .optional()
    .catch(undefined),
});

/** A 200 answer with a result code; undefined for anything else (an error, or not a verify answer). */
export function readVerifyAnswer(body: Record<string, unknown>): VerifyAnswer | undefined {
  const parsed = VERIFY_ANSWER.safeParse(body);
  if (!parsed.success) return undefined;
  const answer = parsed.data;
  return {
    requestId: answer.request_id,
    bizNo: answer.biz_no,
    resultCode: answer.result_code,
    resultMessage: answer.result_message,
    verification: answer.verification,
    attackResult: answer.attack_result,
    imageBest: answer.images?.image_best,
  };
}
