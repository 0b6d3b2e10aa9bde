import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import type { Caller } from '../auth/authenticate-caller';
import type { Config } from '../config/load-config';
import { AppError, type ErrorCode } from '../errors/app-error';
import type { UpstreamToken, UpstreamTokenRequest } from '../faceid/faceid-client';
import { BIZ_TOKEN_LIFETIME_MS, type ParameterName } from '../faceid/parameters';
import { claimRecord, type HeldClaim } from '../idempotency/claim-record';
import type { CompletedRecord, IdempotencyStore, StoredResponse } from '../idempotency/idempotency-store';
import { idempotencyRecordKey } from '../idempotency/record-key';
import type { CircuitBreaker } from '../limits/circuit-breaker';
import type { UpstreamBudget } from '../limits/upstream-budget';
import type { UpstreamGate } from '../limits/upstream-gate';
import type { MultipartForm } from '../token-request/multipart-form';
import {
  type TokenRequest,
  type ValidationPolicy,
  validateTokenRequest,
} from '../token-request/validate-token-request';
import type { BizTokenRegistry } from '../verification/biz-token-registry';

export interface FaceIdGateway {
  getBizToken(request: UpstreamTokenRequest, log: Logger): Promise<UpstreamToken>;
}

export interface IssueBizTokenDeps {
  faceid: FaceIdGateway;
  idempotency: IdempotencyStore;
  budget: UpstreamBudget;
  gate: UpstreamGate;
  breaker: CircuitBreaker;
  /** The operator's policy and who may send `uuid`: fixed at start-up. */
  validation: ValidationPolicy;
  /** How long a second request with the same key waits for the first one's response. */
  idempotencyWaitMs: number;
  /** Every issued token is remembered, so that only its own user can verify it. */
  tokens: BizTokenRegistry;
}

export interface IssueBizTokenInput {
  caller: Caller;
  form: MultipartForm;
  idempotencyKey: string | undefined;
  /**
   * The caller's window is spent, and its Idempotency-Key already holds this record: only a replay of it may
   * be given (the route refuses a spent caller whose key holds no answer before reading the body).
   */
  completedBefore?: CompletedRecord | undefined;
}

export interface IssuedToken {
  body: { biz_token: string; expires_at: string };
  replayed: boolean;
  upstream: Omit<UpstreamToken, 'bizToken'> | undefined;
}

/**
 * The story of one token: a caller over its limit gets only a replay; otherwise check the request locally,
 * answer a repeated Idempotency-Key from its record, wait for an upstream slot, and, unless FaceID's circuit
 * is open, spend one of the operator's daily calls and ask FaceID; keep the answer for replays.
 */
export async function issueBizToken(
  input: IssueBizTokenInput,
  deps: IssueBizTokenDeps,
  log: Logger,
): Promise<IssuedToken> {
  const startedAt = Date.now();
  if (input.completedBefore !== undefined) {
    if (input.completedBefore.fingerprint !== fingerprintOf(input.form)) throw keyReused();
    return replay(input.completedBefore.response);
  }
  const request = validateTokenRequest(input.form, deps.validation);

  const claim = input.idempotencyKey === undefined ? undefined : await claimKey(input, deps);
  if (claim?.kind === 'replay') return replay(claim.response);

  let upstream: UpstreamToken;
  try {
    const upstreamRequest = toUpstream(request, input.caller, deps.validation.policy);
    // The gate outside the breaker: a full queue is the service's own load, not a FaceID failure. The budget
    // innermost: only a call that really goes to FaceID spends it.
    upstream = await deps.gate.run(() =>
      deps.breaker.run(async () => {
        await deps.budget.take();
        return deps.faceid.getBizToken(upstreamRequest, log);
      }),
    );
  } catch (error) {
    if (claim !== undefined) await settleFailedClaim(claim, error, startedAt, deps);
    throw error;
  }
  const expiresAt = new Date(startedAt + BIZ_TOKEN_LIFETIME_MS);
  const body = { biz_token: upstream.bizToken, expires_at: expiresAt.toISOString() };
  await deps.tokens.remember(upstream.bizToken, {
    ownerId: input.caller.id,
    subject: input.caller.subject,
    livenessType: request.livenessType,
    comparisonType: request.comparisonType,
    bizNo: request.fields.find(([name]) => name === 'biz_no')?.[1] ?? '',
    expiresAt: body.expires_at,
  });
  if (claim !== undefined) {
    // The token is issued and paid for: failing to keep it for replays must not cost the caller the token.
    await deps.idempotency
      .complete(claim.key, claim.owner, claim.fingerprint, { status: 201, body }, expiresAt.getTime() - Date.now())
      .catch((error: unknown) => log.warn({ err: error }, 'could not keep the answer for replays'));
  }
  const { bizToken: _token, ...facts } = upstream;
  return { body, replayed: false, upstream: facts };
}

function claimKey(
  input: IssueBizTokenInput,
  deps: IssueBizTokenDeps,
): Promise<HeldClaim | { kind: 'replay'; response: StoredResponse }> {
  return claimRecord(deps.idempotency, recordKey(input), fingerprintOf(input.form), deps.idempotencyWaitMs, {
    mismatch: keyReused,
    stillInProgress: () =>
      new AppError(
        409,
        'IDEMPOTENCY_KEY_REUSED',
        'a request with this Idempotency-Key is still being answered; retry later',
        {
          param: 'Idempotency-Key',
          retryAfterSeconds: 1,
        },
      ),
  });
}

const recordKey = (input: IssueBizTokenInput): string =>
  idempotencyRecordKey(input.caller.id, input.idempotencyKey ?? '');

const keyReused = (): AppError =>
  new AppError(409, 'IDEMPOTENCY_KEY_REUSED', 'this Idempotency-Key was used with a different request body', {
    param: 'Idempotency-Key',
  });

/** Client errors are answers too and are replayed; 5xx outcomes are not kept, so a retry can succeed. */
async function settleFailedClaim(
  claim: HeldClaim,
  error: unknown,
  startedAt: number,
  deps: IssueBizTokenDeps,
): Promise<void> {
  if (error instanceof AppError && error.status < 500) {
    const body = {
      code: error.code,
      detail: error.message,
      ...(error.param === undefined ? {} : { param: error.param }),
    };
    await deps.idempotency.complete(
      claim.key,
      claim.owner,
      claim.fingerprint,
      { status: error.status, body },
      startedAt + BIZ_TOKEN_LIFETIME_MS - Date.now(),
    );
  } else {
    await deps.idempotency.release(claim.key, claim.owner);
  }
}

function replay(response: StoredResponse): IssuedToken {
  if (response.status === 201) {
    return { body: response.body as IssuedToken['body'], replayed: true, upstream: undefined };
  }
  const { code, detail, param } = response.body as { code: ErrorCode; detail: string; param?: string };
  throw new AppError(response.status, code, detail, { param, logContext: { idempotentReplay: true } });
}

/** Same fields and the same file bytes make the same request, whatever the order of the parts. */
function fingerprintOf(form: MultipartForm): string {
  const hash = createHash('sha256');
  for (const [name, values] of [...form.fields].sort(([a], [b]) => a.localeCompare(b))) {
    hash.update(`f:${name}:${values.length}\n`);
    for (const value of values) hash.update(`${Buffer.byteLength(value)}:`).update(value);
  }
  for (const [name, files] of [...form.files].sort(([a], [b]) => a.localeCompare(b))) {
    hash.update(`b:${name}:${files.length}\n`);
    for (const bytes of files) hash.update(createHash('sha256').update(bytes).digest());
  }
  return hash.digest('hex');
}

function toUpstream(request: TokenRequest, caller: Caller, policy: Config['policy']): UpstreamTokenRequest {
  const serviceFields: Array<[ParameterName, string]> = [
    ['security_level', policy.securityLevel],
    ['force_compare', policy.forceCompare],
  ];
  // The seed asks for uuid with comparison_type 0 only. @see ../shared/seed/App-GetBizToken.md (uuid)
  if (request.comparisonType === '0' && caller.uuid !== undefined) serviceFields.push(['uuid', caller.uuid]);
  // The verdict's confidence rule needs FaceID's comparisons, sent only with verbose. @see CONTRACT section 7.2
  if (policy.falseAcceptRate !== undefined) serviceFields.push(['verbose', '1']);
  return { clientFields: request.fields, serviceFields, images: request.images };
}
