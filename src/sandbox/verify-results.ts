import { VERIFY_RESULT_CODES } from '../faceid/verify-result-codes';

/** The outcomes a package may ask for: FaceID's documented result messages, with their codes. */
export const VERIFY_RESULTS = VERIFY_RESULT_CODES;

export type VerifyOutcome = keyof typeof VERIFY_RESULTS;

export const VERIFY_OUTCOMES = Object.keys(VERIFY_RESULTS) as VerifyOutcome[];

export const isVerifyOutcome = (text: string): text is VerifyOutcome => Object.hasOwn(VERIFY_RESULTS, text);

/** Codes a package may force: any four-digit code, for series such as 3100 or codes FaceID adds later. */
export const MIN_RESULT_CODE = 1000;
export const MAX_RESULT_CODE = 9999;

/** The thresholds FaceID's example answer gives, one per false-accept rate. @see ../shared/seed/App-Verify.md */
export const CONFIDENCE_THRESHOLDS = { '1e-3': 62.17, '1e-4': 69.32, '1e-5': 74.4, '1e-6': 78.04 } as const;

/**
 * The series that carry `verification` (with verbose=1), with the confidence answered when the package gives
 * none: the document's example for a match, a clear non-match for 2000.
 * @see ../shared/seed/App-Verify.md (Answer: verification)
 */
const DEFAULT_CONFIDENCE_BY_THOUSAND: Readonly<Record<number, number>> = { 1000: 86.63, 2000: 30.5 };

/** The default confidence of a code's series, or undefined when that series has no `verification`. */
export const defaultConfidence = (code: number): number | undefined =>
  DEFAULT_CONFIDENCE_BY_THOUSAND[Math.floor(code / 1000) * 1000];

/**
 * `attack_result` is absent in the 4200 series (the SDK's capture failed, so nothing was judged).
 * @see ../shared/seed/App-Verify.md (Answer: attack_result)
 */
export const hasAttackResult = (code: number): boolean => Math.floor(code / 100) * 100 !== 4200;

export const ATTACK_THRESHOLD = 0.5;
/** The attack score when the package gives none: a clear attack where the outcome says so, a clear live face else. */
export const defaultAttackScore = (outcome: VerifyOutcome): number =>
  outcome === 'FAIL_LIVING_FACE_ATTACK' ? 0.93 : 0.26;
