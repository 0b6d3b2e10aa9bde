import { VERIFY_RESULT_CODES } from '../faceid/verify-result-codes';

/**
 * From FaceID's verify result to what the app is told: one table of result codes, then the operator's policy.
 * @see ../shared/seed/App-Verify.md (result_code and result_message)
 */

export const VERDICTS = ['passed', 'failed', 'retry'] as const;
export type Verdict = (typeof VERDICTS)[number];

/** The false-accept rates FaceID publishes thresholds for. @see ../shared/seed/App-Verify.md (verification) */
export const FALSE_ACCEPT_RATES = ['1e-3', '1e-4', '1e-5', '1e-6'] as const;
export type FalseAcceptRate = (typeof FALSE_ACCEPT_RATES)[number];

/** The service's own reasons, where its policy, not FaceID, decided. */
export const POLICY_REASONS = ['ATTACK_SUSPECTED', 'BELOW_CONFIDENCE_THRESHOLD'] as const;

/** FaceID's documented result messages and the policy's own reasons. */
const RESULT_MESSAGES: ReadonlySet<string> = new Set([...Object.keys(VERIFY_RESULT_CODES), ...POLICY_REASONS]);

/** A reason as a metric label: the documented ones, anything else as OTHER, so the label stays bounded. */
export const reasonLabel = (reason: string): string => (RESULT_MESSAGES.has(reason) ? reason : 'OTHER');

export interface Comparison {
  confidence: number;
  thresholds: Partial<Record<FalseAcceptRate, number>>;
}

export interface AttackResult {
  score: number;
  threshold: number;
  result: boolean;
}

/** The parts of FaceID's verify answer that decide the verdict. */
export interface VerifyResult {
  resultCode: number;
  resultMessage: string;
  verification: Partial<Record<'idcard' | 'ref1' | 'ref2', Comparison>> | undefined;
  attackResult: AttackResult | undefined;
}

export interface VerdictRule {
  /** What the row covers, as the README and the OpenAPI document show it. */
  faceid: string;
  verdict: Verdict;
  matches: (code: number, message: string) => boolean;
}

const series = (code: number, hundreds: number): boolean => Math.floor(code / 100) === hundreds / 100;
const thousands = (code: number, base: number): boolean => Math.floor(code / 1000) === base / 1000;

/**
 * First matching row wins. Codes FaceID adds later fall through to the last row.
 * @see ../shared/seed/App-Verify.md (FaceID may add codes in future)
 */
export const VERDICT_TABLE: readonly VerdictRule[] = [
  {
    faceid: '1000 `SUCCESS`',
    verdict: 'passed',
    matches: (code) => code === 1000,
  },
  { faceid: '2000 series', verdict: 'failed', matches: (code) => thousands(code, 2000) },
  {
    faceid: '3000 `DATA_SOURCE_ERROR`, 3100 series (the data source failed; not billed)',
    verdict: 'retry',
    matches: (code, message) => (code === 3000 && message === 'DATA_SOURCE_ERROR') || series(code, 3100),
  },
  {
    faceid:
      'other 3000 (`NO_ID_CARD_NUMBER`, `ID_NUMBER_NAME_NOT_MATCH`, `NO_FACE_FOUND`, `NO_ID_PHOTO`, `PHOTO_FORMAT_ERROR`)',
    verdict: 'failed',
    matches: (code) => code === 3000,
  },
  {
    faceid: '4100 `FAIL_LIVING_FACE_ATTACK`',
    verdict: 'failed',
    matches: (code, message) => series(code, 4100) && message === 'FAIL_LIVING_FACE_ATTACK',
  },
  {
    faceid: 'other 4100 (`VIDEO_LACK_FRAMES`, `FAIL_EYES_CLOSE_DETECTION`)',
    verdict: 'retry',
    matches: (code) => series(code, 4100),
  },
  {
    faceid: '4200 series, 9000 series',
    verdict: 'retry',
    matches: (code) => series(code, 4200) || thousands(code, 9000),
  },
  { faceid: 'a code not listed above (logged as a warning)', verdict: 'failed', matches: () => true },
];

/** The row a result falls under; `known` is false for the catch-all, which the caller logs. */
export function ruleFor(code: number, message: string): { rule: VerdictRule; known: boolean } {
  const index = VERDICT_TABLE.findIndex((rule) => rule.matches(code, message));
  const rule = VERDICT_TABLE[index] ?? VERDICT_TABLE[VERDICT_TABLE.length - 1];
  if (rule === undefined) throw new Error('the verdict table is empty');
  return { rule, known: index < VERDICT_TABLE.length - 1 };
}

export interface VerdictPolicy {
  /** POLICY_FORCE_COMPARE=1: FaceID skips its liveness judgement, so a pass needs an attack result. */
  forceCompare: boolean;
  falseAcceptRate: FalseAcceptRate | undefined;
}

export interface Decision {
  verdict: Verdict;
  /** FaceID's result_message, or the service's policy reason. */
  reason: string;
  /** False when the code is none the table knows. */
  knownCode: boolean;
}

/** The verdict for one result: the table, then the policy rules, which can only turn a pass into a failure. */
export function decideVerdict(result: VerifyResult, policy: VerdictPolicy): Decision {
  const { rule, known } = ruleFor(result.resultCode, result.resultMessage);
  const decision: Decision = { verdict: rule.verdict, reason: result.resultMessage, knownCode: known };
  if (decision.verdict !== 'passed') return decision;
  const attack = result.attackResult;
  const attackSuspected =
    attack === undefined ? policy.forceCompare : attack.result || attack.score >= attack.threshold;
  if (attackSuspected) return { ...decision, verdict: 'failed', reason: 'ATTACK_SUSPECTED' };
  if (policy.falseAcceptRate !== undefined && !confident(result, policy.falseAcceptRate)) {
    return { ...decision, verdict: 'failed', reason: 'BELOW_CONFIDENCE_THRESHOLD' };
  }
  return decision;
}

/** Every comparison present reaches its threshold at the rate; no comparison at all is not confident. */
function confident(result: VerifyResult, rate: FalseAcceptRate): boolean {
  const comparisons = Object.values(result.verification ?? {});
  if (comparisons.length === 0) return false;
  return comparisons.every((comparison) => {
    const threshold = comparison.thresholds[rate];
    return threshold !== undefined && comparison.confidence >= threshold;
  });
}
