/**
 * How the sandbox is told to misbehave: the same outcomes through a magic `biz_no` (per request, so a
 * mobile developer can trigger an error screen from the app) or through `PUT /sandbox/scenario` (for every
 * request, e.g. to see a circuit breaker open).
 */
const SANDBOX_OUTCOMES = [
  'INTERNAL_ERROR',
  'CONCURRENCY_LIMIT_EXCEEDED',
  'CONCURRENCY_LIMIT_EXCEEDED_429',
  'NO_FACE_FOUND',
  'MULTIPLE_FACES',
  'LOW_QUALITY',
  'MORE_RETRY_TIMES',
  'NO_DATA_SOURCE_PERMISSION',
  'NO_VERIFY_PERMISSION',
  'API_KEY_BE_DISCONTINUED',
  'API_NOT_FOUND',
  'NOT_JSON',
  'DROP',
  'HANG',
] as const;
export type SandboxOutcome = (typeof SANDBOX_OUTCOMES)[number];

export interface Scenario {
  outcome: SandboxOutcome | undefined;
  /**
   * Any FaceID error string, answered as `400 {"error": "<it>"}` when no outcome is set: for answers the
   * outcomes above do not cover, such as an error FaceID may add later.
   */
  error?: string | undefined;
  /** How many requests get the outcome before the sandbox answers normally again; undefined: all. */
  times: number | undefined;
  latencyMs: number;
}

const BIZ_NO_PREFIX = 'sandbox:';
const MAX_LATENCY_MS = 120_000;
/** What an `error=` directive may say: FaceID's own error strings use no other characters. */
const ERROR_TEXT = /^[A-Za-z0-9_:. -]{1,100}$/;

const isOutcome = (text: string): text is SandboxOutcome => (SANDBOX_OUTCOMES as readonly string[]).includes(text);

/**
 * `sandbox:INTERNAL_ERROR`, `sandbox:INTERNAL_ERROR*2` (the first two requests with this biz_no fail),
 * `sandbox:latency=1500`, `sandbox:error=SOME_NEW_ERROR: reason` (that exact error string; `*N` works
 * too), or several joined by commas. Undefined when the biz_no is not a directive.
 */
export function parseBizNoScenario(bizNo: string | undefined): Scenario | undefined {
  if (bizNo === undefined || !bizNo.startsWith(BIZ_NO_PREFIX)) return undefined;
  const scenario: Scenario = { outcome: undefined, times: undefined, latencyMs: 0 };
  for (const directive of bizNo.slice(BIZ_NO_PREFIX.length).split(',')) {
    const latency = /^latency=(\d{1,6})$/.exec(directive);
    const outcome = /^([A-Z_0-9]+)(?:\*(\d{1,4}))?$/.exec(directive);
    const error = /^error=(.+?)(?:\*(\d{1,4}))?$/.exec(directive);
    if (latency?.[1] !== undefined) scenario.latencyMs = Math.min(Number(latency[1]), MAX_LATENCY_MS);
    else if (error?.[1] !== undefined && ERROR_TEXT.test(error[1])) {
      scenario.error = error[1];
      scenario.times = error[2] === undefined ? undefined : Number(error[2]);
    } else if (outcome?.[1] !== undefined && isOutcome(outcome[1])) {
      scenario.outcome = outcome[1];
      scenario.times = outcome[2] === undefined ? undefined : Number(outcome[2]);
    }
  }
  return scenario;
}

/** The body of `PUT /sandbox/scenario`; undefined when it is not one. */
export function parseScenarioBody(body: unknown): Scenario | undefined {
  if (typeof body !== 'object' || body === null) return undefined;
  const { outcome, error, times, latencyMs } = body as Record<string, unknown>;
  if (outcome !== undefined && (typeof outcome !== 'string' || !isOutcome(outcome))) return undefined;
  if (error !== undefined && (typeof error !== 'string' || !ERROR_TEXT.test(error))) return undefined;
  if (times !== undefined && (!Number.isInteger(times) || (times as number) < 0)) return undefined;
  if (latencyMs !== undefined && (!Number.isInteger(latencyMs) || (latencyMs as number) < 0)) return undefined;
  return {
    outcome,
    error: error as string | undefined,
    times: times as number | undefined,
    latencyMs: Math.min((latencyMs as number | undefined) ?? 0, MAX_LATENCY_MS),
  };
}
