import type { KeyObject } from 'node:crypto';
import type { LivenessType } from '../faceid/parameters';
import type { MultipartForm } from '../token-request/multipart-form';
import type { IssuedToken, IssuedTokens } from './issued-tokens';
import { decodeMeglivePackage, type MegliveContent } from './meglive-package';
import { type Answer, type FieldKind, faceIdError, type Judgement, requestId, shapeProblem } from './sandbox-http';
import {
  ATTACK_THRESHOLD,
  CONFIDENCE_THRESHOLDS,
  defaultAttackScore,
  defaultConfidence,
  hasAttackResult,
  isVerifyOutcome,
  MAX_RESULT_CODE,
  MIN_RESULT_CODE,
  VERIFY_OUTCOMES,
  VERIFY_RESULTS,
} from './verify-results';

/**
 * The sandbox's App-Verify: its own tokens only, each verified once, the outcome read from a package that
 * `POST /sandbox/meglive-data` made.
 * @see ../shared/seed/App-Verify.md
 */
export const MEGLIVE_DATA_PATH = '/sandbox/meglive-data';
/** Small forms only: the route takes five short fields. */
export const MEGLIVE_DATA_MAX_BYTES = 64 * 1024;

/** App-Verify's parameters. @see ../shared/seed/App-Verify.md (Parameters) */
const VERIFY_PARAMETERS: Readonly<Record<string, FieldKind>> = {
  sign: 'text',
  sign_version: 'text',
  biz_token: 'text',
  meglive_data: 'file',
};

/**
 * Whether verify needs a package: the liveness flows produce one; with raw_image FaceID compares the image
 * given at get_biz_token. @see ../shared/seed/App-Verify.md (Parameters: meglive_data)
 */
const MEGLIVE_DATA_REQUIRED: Readonly<Record<LivenessType, boolean>> = { meglive: true, still: true, raw_image: false };

/** The checks that need no state: unknown, repeated or mistyped parameters. */
export function verifyShapeProblem(form: MultipartForm): Answer | undefined {
  const problem = shapeProblem(form, (name) =>
    Object.hasOwn(VERIFY_PARAMETERS, name) ? VERIFY_PARAMETERS[name] : undefined,
  );
  return problem === undefined ? undefined : faceIdError(400, problem);
}

/**
 * The token and package checks, and the answer when they pass. Called when the answer is due, so nothing
 * happens between the check that the token is unused and its marking as verified.
 */
export function judgeVerify(form: MultipartForm, tokens: IssuedTokens, key: KeyObject, startedAt: number): Judgement {
  const bizToken = form.fields.get('biz_token')?.[0];
  if (bizToken === undefined) return { problem: faceIdError(400, 'MISSING_ARGUMENTS: biz_token') };
  const token = tokens.find(bizToken);
  // The decompiled SDK maps exactly this error to BIZ_TOKEN_DENIED. @see ../shared/seed/App-Verify.md
  if (token === undefined || token.verified) return { problem: faceIdError(400, 'BAD_ARGUMENTS: biz_token') };
  const bytes = form.files.get('meglive_data')?.[0];
  let content: MegliveContent = { bizToken, outcome: 'SUCCESS' };
  if (bytes === undefined && MEGLIVE_DATA_REQUIRED[token.livenessType]) {
    return { problem: faceIdError(400, 'MISSING_ARGUMENTS: meglive_data') };
  }
  if (bytes !== undefined) {
    const decoded = decodeMeglivePackage(bytes, key);
    if (decoded === undefined) return { problem: faceIdError(400, 'MEGLIVE_DATA_ERROR') };
    if (decoded.bizToken !== bizToken) return { problem: faceIdError(400, 'MEGLIVE_DATA_BIZ_TOKEN_NOT_MATCH') };
    content = decoded;
  }
  return {
    success: () => {
      tokens.markVerified(bizToken);
      return { status: 200, body: verifyAnswer(token, content, startedAt) };
    },
  };
}

/** FaceID's answer for an outcome. @see ../shared/seed/App-Verify.md (Answer) */
export function verifyAnswer(token: IssuedToken, content: MegliveContent, startedAt: number): Record<string, unknown> {
  const resultCode = content.resultCode ?? VERIFY_RESULTS[content.outcome];
  const body: Record<string, unknown> = {
    request_id: requestId(),
    biz_no: token.bizNo,
    time_used: Math.max(1, Date.now() - startedAt),
    result_code: resultCode,
    result_message: content.outcome,
  };
  const seriesConfidence = defaultConfidence(resultCode);
  if (token.verbose && seriesConfidence !== undefined) {
    const comparison = { confidence: content.confidence ?? seriesConfidence, thresholds: { ...CONFIDENCE_THRESHOLDS } };
    // One comparison per photo the token was issued with: the authoritative one, then the references.
    const present: Array<[string, boolean]> = [
      ['idcard', token.comparisonType === '1'],
      ['ref1', token.imageRef1],
      ['ref2', token.imageRef2],
    ];
    body.verification = Object.fromEntries(present.filter(([, given]) => given).map(([name]) => [name, comparison]));
  }
  if (hasAttackResult(resultCode)) {
    const score = content.attackScore ?? defaultAttackScore(content.outcome);
    body.attack_result = { score, threshold: ATTACK_THRESHOLD, result: score >= ATTACK_THRESHOLD };
  }
  body.images = { image_best: IMAGE_BEST };
  return body;
}

/** A field of `POST /sandbox/meglive-data`: whether it must be sent and which texts it takes. */
interface MegliveDataField {
  required: boolean;
  valid: (text: string) => boolean;
  /** Where the field is a choice: the error then names the value sent and lists these, so a typo is obvious. */
  allowed?: readonly string[];
}

const DECIMAL = /^\d{1,3}(?:\.\d{1,12})?$/;
const decimalIn = (min: number, max: number) => (text: string) =>
  DECIMAL.test(text) && Number(text) >= min && Number(text) <= max;

const MEGLIVE_DATA_FIELDS: Readonly<Record<string, MegliveDataField>> = {
  // Checked against the issued tokens apart, as its answer depends on state.
  biz_token: { required: true, valid: (text) => text.length > 0 },
  outcome: { required: true, valid: isVerifyOutcome, allowed: VERIFY_OUTCOMES },
  confidence: { required: false, valid: decimalIn(0, 100) },
  attack_score: { required: false, valid: decimalIn(0, 1) },
  result_code: {
    required: false,
    valid: (text) => /^\d{4}$/.test(text) && Number(text) >= MIN_RESULT_CODE && Number(text) <= MAX_RESULT_CODE,
  },
};

/** How much of an unknown outcome the error repeats. */
const ECHO_CHARS = 64;

/** The content a `POST /sandbox/meglive-data` form asks for, or its 400 answer. */
export function megliveDataContent(
  form: MultipartForm,
  tokens: IssuedTokens,
): { content: MegliveContent } | { problem: Answer } {
  const bad = (error: string, extra: Record<string, unknown> = {}) => ({
    problem: { status: 400, body: { error, ...extra } },
  });
  const shape = shapeProblem(form, (name) => (Object.hasOwn(MEGLIVE_DATA_FIELDS, name) ? 'text' : undefined));
  if (shape !== undefined) return bad(shape);
  for (const [name, field] of Object.entries(MEGLIVE_DATA_FIELDS)) {
    const value = form.fields.get(name)?.[0];
    if (value === undefined) {
      if (field.required) return bad(`MISSING_ARGUMENTS: ${name}`);
      continue;
    }
    if (field.valid(value)) continue;
    if (field.allowed === undefined) return bad(`BAD_ARGUMENTS: ${name}`);
    return bad(`BAD_ARGUMENTS: ${name} (unknown ${name} "${value.slice(0, ECHO_CHARS)}")`, { allowed: field.allowed });
  }
  const text = (name: string): string | undefined => form.fields.get(name)?.[0];
  const number = (name: string): number | undefined => {
    const value = text(name);
    return value === undefined ? undefined : Number(value);
  };
  const bizToken = text('biz_token') ?? '';
  const token = tokens.find(bizToken);
  if (token === undefined || token.verified) return bad('BAD_ARGUMENTS: biz_token');
  const outcome = text('outcome') ?? '';
  // Checked in the loop above; this narrows the type.
  if (!isVerifyOutcome(outcome)) return bad('BAD_ARGUMENTS: outcome');
  return {
    content: {
      bizToken,
      outcome,
      confidence: number('confidence'),
      attackScore: number('attack_score'),
      resultCode: number('result_code'),
    },
  };
}

/** `images.image_best`: an 8×8 baseline JPEG, so a client that decodes it gets a real image. */
const IMAGE_BEST = [
  '/9j/4AAQSkZJRgABAQAAAQABAAD/2wCEABALDA4MChAODQ4SERATGCgaGBYWGDEjJR0oOjM9PDkzODdASFxOQERXRTc4UG1RV19iZ2hnPk1xeXBk',
  'eFxlZ2MBERISGBUYLxoaL2NCOEJjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY//AABEIAAgACAMBEQAC',
  'EQEDEQH/xAGiAAABBQEBAQEBAQAAAAAAAAAAAQIDBAUGBwgJCgsQAAIBAwMCBAMFBQQEAAABfQECAwAEEQUSITFBBhNRYQcicRQygZGhCCNCscEV',
  'UtHwJDNicoIJChYXGBkaJSYnKCkqNDU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVmZ2hpanN0dXZ3eHl6g4SFhoeIiYqSk5SVlpeYmZqio6Slpqeo',
  'qaqys7S1tre4ubrCw8TFxsfIycrS09TV1tfY2drh4uPk5ebn6Onq8fLz9PX29/j5+gEAAwEBAQEBAQEBAQAAAAAAAAECAwQFBgcICQoLEQACAQIE',
  'BAMEBwUEBAABAncAAQIDEQQFITEGEkFRB2FxEyIygQgUQpGhscEJIzNS8BVictEKFiQ04SXxFxgZGiYnKCkqNTY3ODk6Q0RFRkdISUpTVFVWV1hZ',
  'WmNkZWZnaGlqc3R1dnd4eXqCg4SFhoeIiYqSk5SVlpeYmZqio6Slpqeoqaqys7S1tre4ubrCw8TFxsfIycrS09TV1tfY2dri4+Tl5ufo6ery8/T1',
  '9vf4+fr/2gAMAwEAAhEDEQA/ANWuc6j/AP/Z',
].join('');
