import { createHmac, createSecretKey, type KeyObject, timingSafeEqual } from 'node:crypto';
import { z } from 'zod';
import { isVerifyOutcome, MAX_RESULT_CODE, MIN_RESULT_CODE, type VerifyOutcome } from './verify-results';

/**
 * The sandbox's stand-in for the MegLiveStill SDK's `meglive_data`: what verify should answer, for one
 * biz_token, sealed so that any change is detected as FaceID detects it (`MEGLIVE_DATA_ERROR`).
 * @see ../shared/seed/App-Verify.md (Parameters: meglive_data, "any change makes it unparsable")
 *
 * Layout, version 1 (all lengths in bytes, integers big-endian):
 *   0   8   magic, ASCII `MEGSBXPK`
 *   8   1   version, 1
 *   9   4   N, the length of the content
 *   13  N   content: UTF-8 JSON `{"biz_token", "outcome", "confidence"?, "attack_score"?, "result_code"?}`
 *   13+N 32 tag: HMAC-SHA256 over bytes 0 .. 13+N, keyed by {@link packageKey} of the sandbox's api secret
 * The content is length-prefixed, so any bytes may stand in it; the total length must be exactly 45 + N.
 */
export interface MegliveContent {
  bizToken: string;
  outcome: VerifyOutcome;
  /** 0..100: the `verification` confidence to answer. */
  confidence?: number | undefined;
  /** 0..1: the `attack_result.score` to answer. */
  attackScore?: number | undefined;
  /** 1000..9999: overrides the outcome's code. */
  resultCode?: number | undefined;
}

const MAGIC = Buffer.from('MEGSBXPK', 'ascii');
const VERSION = 1;
const HEADER_BYTES = MAGIC.length + 1 + 4;
const TAG_BYTES = 32;
/** Far above any real content; keeps a forged length from allocating anything. */
const MAX_CONTENT_BYTES = 16 * 1024;

/**
 * The tag's key, derived from the api secret rather than the secret itself, so the package's MAC and the
 * request sign never share a key.
 */
export function packageKey(apiSecret: string): KeyObject {
  return createSecretKey(createHmac('sha256', apiSecret).update('faceid-sandbox meglive_data v1').digest());
}

export function encodeMeglivePackage(content: MegliveContent, key: KeyObject): Buffer {
  const json = Buffer.from(
    JSON.stringify({
      biz_token: content.bizToken,
      outcome: content.outcome,
      confidence: content.confidence,
      attack_score: content.attackScore,
      result_code: content.resultCode,
    }),
    'utf8',
  );
  const header = Buffer.alloc(HEADER_BYTES);
  MAGIC.copy(header, 0);
  header.writeUInt8(VERSION, MAGIC.length);
  header.writeUInt32BE(json.length, MAGIC.length + 1);
  const sealed = Buffer.concat([header, json]);
  return Buffer.concat([sealed, createHmac('sha256', key).update(sealed).digest()]);
}

const contentSchema = z.strictObject({
  biz_token: z.string().min(1),
  outcome: z.string().refine(isVerifyOutcome),
  confidence: z.number().min(0).max(100).optional(),
  attack_score: z.number().min(0).max(1).optional(),
  result_code: z.number().int().min(MIN_RESULT_CODE).max(MAX_RESULT_CODE).optional(),
});

/** The package's content, or undefined when it is not one this sandbox made or any byte of it changed. */
export function decodeMeglivePackage(bytes: Buffer, key: KeyObject): MegliveContent | undefined {
  if (bytes.length < HEADER_BYTES + TAG_BYTES || !bytes.subarray(0, MAGIC.length).equals(MAGIC)) return undefined;
  if (bytes.readUInt8(MAGIC.length) !== VERSION) return undefined;
  const length = bytes.readUInt32BE(MAGIC.length + 1);
  if (length > MAX_CONTENT_BYTES || bytes.length !== HEADER_BYTES + length + TAG_BYTES) return undefined;
  const sealed = bytes.subarray(0, HEADER_BYTES + length);
  const tag = bytes.subarray(HEADER_BYTES + length);
  if (!timingSafeEqual(tag, createHmac('sha256', key).update(sealed).digest())) return undefined;
  let json: unknown;
  try {
    json = JSON.parse(sealed.subarray(HEADER_BYTES).toString('utf8'));
  } catch {
    return undefined;
  }
  const parsed = contentSchema.safeParse(json);
  if (!parsed.success || !isVerifyOutcome(parsed.data.outcome)) return undefined;
  const { biz_token, outcome, confidence, attack_score, result_code } = parsed.data;
  return { bizToken: biz_token, outcome, confidence, attackScore: attack_score, resultCode: result_code };
}
