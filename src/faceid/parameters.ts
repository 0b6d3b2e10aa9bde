import { z } from 'zod';
import { MAX_IMAGE_SIDE } from '../images/inspect-image';
import { SIGN_VERSION } from './sign';

/** The seed's enumerations, the one source for the table below, the policy variables and the sandbox. */
export const LIVENESS_TYPES = ['meglive', 'still', 'raw_image'] as const;
export const COMPARISON_TYPES = ['0', '1'] as const;
export const SECURITY_LEVELS = ['1', '2', '3', '4'] as const;
export type LivenessType = (typeof LIVENESS_TYPES)[number];
export type ComparisonType = (typeof COMPARISON_TYPES)[number];

/**
 * FaceID refuses requests over 20 MB with a plain-text 413 (nginx's page and its `20m`, so MiB).
 * @see ../shared/seed/App-GetBizToken.md (413 Request Entity Too Large)
 */
export const FACEID_MAX_REQUEST_BYTES = 20 * 1024 * 1024;

/**
 * The largest upload the service accepts: FaceID's limit less room for what the service adds (the sign and
 * its own fields, and part headers that may be longer than the client's own). A body the service accepts
 * is then never one FaceID refuses as too large after the call is spent.
 */
export const MAX_REQUEST_BYTES = FACEID_MAX_REQUEST_BYTES - 64 * 1024;

/**
 * The parameters of App-GetBizToken exactly as FaceID documents them: their value formats and which
 * comparison or liveness type they belong to. Both the service's own validation and the sandbox read this
 * one table, so the two cannot drift apart on a seed rule.
 * @see ../shared/seed/App-GetBizToken.md (参数)
 */

const utf8Bytes = (text: string): number => Buffer.byteLength(text, 'utf8');
/** The exact decimal spellings FaceID accepts, so the JSON Schema in the OpenAPI document is exact too. */
const decimal = (min: number, max: number) =>
  z.enum(
    Array.from({ length: max - min + 1 }, (_, index) => String(min + index)),
    { error: `must be a whole number from ${min} to ${max}` },
  );
const flag = (meaning: string) => z.enum(['0', '1'], { error: 'must be "0" or "1"' }).describe(meaning);
const maxBytes = (limit: number) =>
  z
    .string()
    .min(1, 'must not be empty')
    .refine((text) => utf8Bytes(text) <= limit, `must be at most ${limit} bytes (UTF-8)`);

export type ParameterName =
  | 'sign'
  | 'sign_version'
  | 'liveness_type'
  | 'comparison_type'
  | 'idcard_name'
  | 'idcard_number'
  | 'uuid'
  | 'image_ref1'
  | 'image_ref2'
  | 'image'
  | 'biz_no'
  | 'liveness_timeout'
  | 'liveness_action_count'
  | 'eyes_close_detection'
  | 'fail_when_multiple_faces'
  | 'face_quality_threshold'
  | 'return_faces'
  | 'verbose'
  | 'security_level'
  | 'force_compare'
  | 'multi_oriented_detection';

export type FileParameterName = 'image_ref1' | 'image_ref2' | 'image';

interface ParameterRuleBase {
  description: string;
  /** Liveness types the parameter belongs to; undefined: all. */
  livenessTypes?: readonly LivenessType[];
  /** Comparison types the parameter belongs to; undefined: all. */
  comparisonTypes?: readonly ComparisonType[];
  /** Required when the request's types are among these. */
  requiredFor?: { comparisonTypes?: readonly ComparisonType[]; livenessTypes?: readonly LivenessType[]; always?: true };
}
export interface TextParameterRule extends ParameterRuleBase {
  kind: 'text';
  schema: z.ZodType<string, string>;
}
export interface FileParameterRule extends ParameterRuleBase {
  kind: 'file';
}
export type ParameterRule = TextParameterRule | FileParameterRule;

export const PARAMETERS: Record<ParameterName, ParameterRule> = {
  sign: {
    kind: 'text',
    schema: z.string().min(1),
    requiredFor: { always: true },
    description: 'Request signature (App-Authentication).',
  },
  sign_version: {
    kind: 'text',
    schema: z.literal(SIGN_VERSION, { error: `must be "${SIGN_VERSION}"` }),
    requiredFor: { always: true },
    description: 'Signature algorithm version: hmac_sha1.',
  },
  liveness_type: {
    kind: 'text',
    schema: z.enum(LIVENESS_TYPES, { error: 'must be meglive, still or raw_image' }),
    requiredFor: { always: true },
    description:
      'Liveness flow: meglive (actions), still (silent) or raw_image (no liveness; compare the uploaded `image`).',
  },
  comparison_type: {
    kind: 'text',
    schema: z.enum(COMPARISON_TYPES, { error: 'must be "0" or "1"' }),
    requiredFor: { always: true },
    description:
      '"1": compare with the authoritative data source (needs idcard_name and idcard_number); "0": compare with the client\'s own reference photo image_ref1.',
  },
  idcard_name: {
    kind: 'text',
    schema: z.string().min(1, 'must not be empty').max(64, 'must be at most 64 characters'),
    comparisonTypes: ['1'],
    requiredFor: { comparisonTypes: ['1'] },
    description: 'Name of the person to verify (UTF-8).',
  },
  idcard_number: {
    kind: 'text',
    schema: z.string().length(18, 'must be 18 characters'),
    comparisonTypes: ['1'],
    requiredFor: { comparisonTypes: ['1'] },
    description: '18-character PRC resident ID number.',
  },
  uuid: {
    kind: 'text',
    schema: maxBytes(128),
    comparisonTypes: ['0'],
    requiredFor: { comparisonTypes: ['0'] },
    description: 'Stable id of the user, at most 128 bytes.',
  },
  image_ref1: {
    kind: 'file',
    requiredFor: { comparisonTypes: ['0'] },
    description: `Reference face photo (JPEG, PNG or BMP, at most ${MAX_IMAGE_SIDE} px a side).`,
  },
  image_ref2: {
    kind: 'file',
    description: `Second reference face photo (JPEG, PNG or BMP, at most ${MAX_IMAGE_SIDE} px a side).`,
  },
  image: {
    kind: 'file',
    livenessTypes: ['raw_image'],
    requiredFor: { livenessTypes: ['raw_image'] },
    description: 'The photo to compare when liveness_type is raw_image.',
  },
  biz_no: { kind: 'text', schema: maxBytes(128), description: "Caller's business serial number, at most 128 bytes." },
  liveness_timeout: { kind: 'text', schema: decimal(5, 60), description: 'Liveness timeout in seconds, 5 to 60.' },
  liveness_action_count: {
    kind: 'text',
    schema: decimal(1, 3),
    livenessTypes: ['meglive'],
    description: 'Number of actions, 1 to 3 (meglive only).',
  },
  eyes_close_detection: {
    kind: 'text',
    schema: flag('Fail when the eyes stay closed (still only).'),
    livenessTypes: ['still'],
    description: '"1": fail when the eyes stay closed (still only).',
  },
  fail_when_multiple_faces: {
    kind: 'text',
    schema: flag('Fail on several faces (raw_image only).'),
    livenessTypes: ['raw_image'],
    description: '"1": fail on several faces in `image`; "0": use the largest (raw_image only).',
  },
  face_quality_threshold: {
    kind: 'text',
    schema: decimal(0, 100),
    livenessTypes: ['raw_image'],
    description: 'Minimum face quality 0 to 100 (raw_image only).',
  },
  return_faces: {
    kind: 'text',
    schema: flag('Return face detection results.'),
    description: 'Return face detection results.',
  },
  verbose: { kind: 'text', schema: flag('Detail of the answer.'), description: 'Detail of the answer.' },
  security_level: {
    kind: 'text',
    schema: z.enum(SECURITY_LEVELS, { error: 'must be 1, 2, 3 or 4' }),
    description: 'Strictness of the comparison, 1 to 4.',
  },
  force_compare: {
    kind: 'text',
    schema: flag('Compare even when the face looks fake.'),
    description: 'Compare even when the face looks fake.',
  },
  multi_oriented_detection: {
    kind: 'text',
    schema: flag('Retry face detection on rotated reference photos.'),
    description: '"1": retry face detection on reference photos rotated by 90, 180 and 270 degrees.',
  },
};

export const FILE_PARAMETERS: readonly FileParameterName[] = ['image_ref1', 'image_ref2', 'image'];

export const isParameterName = (name: string): name is ParameterName => Object.hasOwn(PARAMETERS, name);

/** Whether a parameter may appear at all with these types (the seed's 二选一 / 三选一 groups). */
export function fitsTypes(rule: ParameterRule, comparisonType: ComparisonType, livenessType: LivenessType): boolean {
  return (
    (rule.comparisonTypes === undefined || rule.comparisonTypes.includes(comparisonType)) &&
    (rule.livenessTypes === undefined || rule.livenessTypes.includes(livenessType))
  );
}

export function isRequired(rule: ParameterRule, comparisonType: ComparisonType, livenessType: LivenessType): boolean {
  const required = rule.requiredFor;
  if (required === undefined) return false;
  return (
    required.always === true ||
    (required.comparisonTypes?.includes(comparisonType) ?? false) ||
    (required.livenessTypes?.includes(livenessType) ?? false)
  );
}

/** The message of the first zod issue, or undefined when the value is valid. */
export function valueProblem(rule: TextParameterRule, value: string): string | undefined {
  const result = rule.schema.safeParse(value);
  return result.success ? undefined : (result.error.issues[0]?.message ?? 'is malformed');
}

/** A biz_token is single-use and valid for one hour. @see ../shared/seed/App-GetBizToken.md (返回值说明) */
export const BIZ_TOKEN_LIFETIME_MS = 60 * 60 * 1000;
