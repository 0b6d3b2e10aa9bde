import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import type { Caller } from '../auth/authenticate-caller';
import { AppError, badArgument, missingArgument } from '../errors/app-error';
import type { ExchangeFacts, UpstreamVerification, UpstreamVerifyRequest } from '../faceid/faceid-client';
import { claimRecord } from '../idempotency/claim-record';
import type { IdempotencyStore } from '../idempotency/idempotency-store';
import type { CircuitBreaker } from '../limits/circuit-breaker';
import type { UpstreamBudget } from '../limits/upstream-budget';
import type { UpstreamGate } from '../limits/upstream-gate';
import type { MultipartForm } from '../token-request/multipart-form';
import type { BizTokenRegistry } from '../verification/biz-token-registry';
import { type Decision, decideVerdict, type VerdictPolicy } from '../verification/verdict';
import {
  type AppVerdict,
  appViewOf,
  newVerificationId,
  type VerificationRecord,
} from '../verification/verification-record';
import type { VerificationData } from '../webhooks/verification-event';

export interface VerifyGateway {
  verify(request: UpstreamVerifyRequest, log: Logger): Promise<UpstreamVerification>;
}

/** Where a verdict goes once decided: the record store, the webhook queue and the metrics. */
export interface VerdictSink {
  keep(record: VerificationRecord): Promise<void>;
  /** Queues the webhook, if one is configured; the image travels only with it. */
  announce(data: VerificationData, imageBest: string | undefined, log: Logger): Promise<void>;
  counted(decision: Decision): void;
}

export interface VerifyBizTokenDeps {
  faceid: VerifyGateway;
  tokens: BizTokenRegistry;
  /** The Idempotency-Key records: a biz_token's verdict is one more such record. */
  idempotency: IdempotencyStore;
  budget: UpstreamBudget;
  gate: UpstreamGate;
  breaker: CircuitBreaker;
  policy: VerdictPolicy;
  sink: VerdictSink;
  /** How long a concurrent duplicate waits for the first request's verdict. */
  waitMs: number;
}

export interface VerifiedToken {
  body: AppVerdict;
  replayed: boolean;
  upstream: (ExchangeFacts & { resultCode: number }) | undefined;
}

const TEXT_FIELDS: ReadonlySet<string> = new Set(['biz_token']);
/** The same record for every request with the token: its body does not matter, its token does. */
const FINGERPRINT = 'verification';

/**
 * The story of one verification: the token must be the caller's and live; its first verdict is replayed;
 * otherwise one FaceID call (concurrent duplicates wait for it), the verdict from the table and the policy,
 * the record kept, the backend told, and the verdict stored for replays. Errors are not stored, so the app
 * may try again.
 */
export async function verifyBizToken(
  caller: Caller,
  form: MultipartForm,
  deps: VerifyBizTokenDeps,
  log: Logger,
): Promise<VerifiedToken> {
  const bizToken = readBizToken(form);
  const token = await deps.tokens.findOwned(bizToken, caller.id);
  if (token === undefined) throw bizTokenNotFound();
  const key = `verification:${createHash('sha256').update(bizToken).digest('hex')}`;
  const claim = await claimRecord(deps.idempotency, key, FINGERPRINT, deps.waitMs, {
    // The record's key and fingerprint are the service's own: another fingerprint under it is a bug.
    mismatch: () => new AppError(500, 'INTERNAL_ERROR', 'an internal error occurred; it has been logged'),
    stillInProgress: () =>
      new AppError(503, 'UPSTREAM_BUSY', 'this biz_token is being verified by another request; try again shortly', {
        retryAfterSeconds: 1,
      }),
  });
  if (claim.kind === 'replay') {
    return { body: claim.response.body as unknown as AppVerdict, replayed: true, upstream: undefined };
  }

  let verified: UpstreamVerification;
  try {
    const megliveData = readMegliveData(form, token.livenessType);
    verified = await deps.gate.run(() =>
      deps.breaker.run(async () => {
        await deps.budget.take();
        return deps.faceid.verify({ bizToken, megliveData }, log);
      }),
    );
  } catch (error) {
    await deps.idempotency.release(claim.key, claim.owner);
    throw error;
  }

  const { answer, ...facts } = verified;
  const decision = decideVerdict(answer, deps.policy);
  if (!decision.knownCode) {
    log.warn({ resultCode: answer.resultCode }, 'FaceID answered a result code the verdict table does not know');
  }
  const data: VerificationData = {
    verification_id: newVerificationId(),
    user: token.subject ?? null,
    biz_token: bizToken,
    biz_no: token.bizNo,
    liveness_type: token.livenessType,
    comparison_type: token.comparisonType,
    verdict: decision.verdict,
    reason: decision.reason,
    result_code: answer.resultCode,
    result_message: answer.resultMessage,
    ...(answer.verification === undefined ? {} : { verification: answer.verification }),
    ...(answer.attackResult === undefined ? {} : { attack_result: answer.attackResult }),
    faceid_request_id: answer.requestId ?? null,
    verified_at: new Date().toISOString(),
  };
  const body = appViewOf(data);
  deps.sink.counted(decision);
  // The verdict is FaceID's and the token is spent: what follows must not turn it into an error.
  await deps.sink
    .keep({ ownerId: caller.id, data })
    .catch((error: unknown) => log.warn({ err: error }, 'could not keep the verification record'));
  await deps.sink
    .announce(data, answer.imageBest, log)
    .catch((error: unknown) => log.warn({ err: error }, 'could not queue the webhook'));
  await deps.idempotency
    .complete(claim.key, claim.owner, FINGERPRINT, { status: 201, body: { ...body } }, untilExpiry(token.expiresAt))
    .catch((error: unknown) => log.warn({ err: error }, 'could not keep the verdict for replays'));
  return { body, replayed: false, upstream: { ...facts, resultCode: answer.resultCode } };
}

/** Unknown, expired and another user's tokens alike: the answer tells nothing of which. */
export const bizTokenNotFound = (): AppError =>
  new AppError(404, 'BIZ_TOKEN_NOT_FOUND', 'no biz_token of yours with this value is live', { param: 'biz_token' });

const untilExpiry = (expiresAt: string): number => Math.max(1_000, Date.parse(expiresAt) - Date.now());

/** Exactly one non-empty `biz_token`, and no field of another name. */
function readBizToken(form: MultipartForm): string {
  for (const [name, values] of form.fields) {
    if (name === 'meglive_data') throw badArgument(name, 'meglive_data must be sent as a file');
    if (!TEXT_FIELDS.has(name)) throw badArgument(name, `${name} is not a field of this endpoint`);
    if (values.length > 1) throw badArgument(name, `${name} was sent more than once`);
  }
  const bizToken = form.fields.get('biz_token')?.[0];
  if (bizToken === undefined || bizToken.length === 0) throw missingArgument('biz_token');
  return bizToken;
}

/**
 * The package as the SDK made it; required unless the token's liveness is raw_image.
 * @see ../shared/seed/App-Verify.md (Parameters, meglive_data)
 */
function readMegliveData(form: MultipartForm, livenessType: string): Buffer | undefined {
  const files = form.files.get('meglive_data') ?? [];
  if (files.length > 1) throw badArgument('meglive_data', 'meglive_data was sent more than once');
  const megliveData = files[0];
  if ((megliveData === undefined || megliveData.length === 0) && livenessType !== 'raw_image') {
    throw missingArgument('meglive_data');
  }
  return megliveData !== undefined && megliveData.length > 0 ? megliveData : undefined;
}
