import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type { AuthenticateCaller, Caller } from '../auth/authenticate-caller';
import { AppError } from '../errors/app-error';
import type { AnsweredRecord } from '../idempotency/idempotency-store';
import { contextOf, outcomeOf } from '../http/request-context';
import { closeAfterAnswer, sendJson } from '../http/response';
import type { UploadBufferPool } from '../limits/upload-buffer-pool';
import type { UploadMemoryBudget } from '../limits/upload-memory-budget';
import type { UserRateLimiter } from '../limits/user-rate-limiter';
import { writeProblem } from '../middleware/error-handler';
import { idempotencyKeyOf } from '../middleware/idempotency-key';
import { readMultipartForm } from '../middleware/parse-multipart';
import { answeredOrRefuse, rateLimitPolicy, spendRequest } from '../middleware/rate-limit';
import type { Metrics } from '../observability/metrics';
import { issueBizToken, type IssueBizTokenDeps } from '../use-cases/issue-biz-token';

export const BIZ_TOKENS_PATH = '/v1/biz-tokens';

export interface BizTokenRouteDeps {
  logger: Logger;
  authenticateCaller: AuthenticateCaller;
  clientAddress: (req: IncomingMessage) => string;
  rateLimiter: UserRateLimiter;
  metrics: Metrics;
  uploadBudget: UploadMemoryBudget;
  uploadBuffers: UploadBufferPool;
  useCase: IssueBizTokenDeps;
}

/**
 * Whether a request is for this route, matched as Express matched it (letter case and a trailing slash do
 * not matter); anything else on the path (GET, OPTIONS) is Express's.
 */
export function isBizTokenRequest(req: IncomingMessage): boolean {
  if (req.method !== 'POST') return false;
  const path = (req.url ?? '').split('?')[0]?.toLowerCase();
  return path === BIZ_TOKENS_PATH || path === `${BIZ_TOKENS_PATH}/`;
}

/**
 * `POST /v1/biz-tokens`: who asks, how often, what they sent, then the use case. Plain node:http, not an
 * Express route: Express's per-request work cost about a tenth of a CPU-millisecond here, a sixth of the
 * whole budget (see BENCHMARKS.md).
 */
export function bizTokenRoute(deps: BizTokenRouteDeps): (req: IncomingMessage, res: ServerResponse) => void {
  const policy = rateLimitPolicy(deps.rateLimiter);
  return (req, res) => {
    contextOf(res).route = BIZ_TOKENS_PATH;
    res.setHeader('RateLimit-Policy', policy);
    res.once('close', () => recordOutcome(deps.metrics, res));
    answer(req, res, deps).catch((error: unknown) => {
      // Answered before the upload was read: the rest of it is not worth waiting for.
      if (!req.complete) closeAfterAnswer(req, res);
      writeProblem(res, error);
    });
  };
}

async function answer(req: IncomingMessage, res: ServerResponse, deps: BizTokenRouteDeps): Promise<void> {
  const context = contextOf(res);
  const caller = await deps.authenticateCaller(req.headers.authorization, () => deps.clientAddress(req));
  context.caller = caller;
  // Spent before the key is checked: every authenticated request counts, a malformed key included.
  const refusal = await spendRequest(deps.rateLimiter, caller, res);
  const idempotencyKey = idempotencyKeyOf(req.headers);
  let answeredBefore: AnsweredRecord | undefined;
  if (refusal !== undefined) {
    if (idempotencyKey === undefined) throw refusal;
    answeredBefore = await answeredOrRefuse(deps.useCase.idempotency, caller, idempotencyKey, refusal);
  }
  const upload = await readMultipartForm(req, res, deps.uploadBudget, deps.uploadBuffers);
  if (upload === undefined) return;
  const log = deps.logger.child({ request_id: context.requestId });
  try {
    context.issued = await issueBizToken({ caller, form: upload.form, idempotencyKey, answeredBefore }, deps.useCase, log);
  } catch (error) {
    if (error instanceof AppError && error.logContext?.idempotentReplay === true) markReplay(res, deps, caller, log);
    throw error;
  } finally {
    // The use case is done with the photos: FaceID's exchange has closed, retries included.
    upload.recycle();
  }
  if (context.issued.replayed) markReplay(res, deps, caller, log);
  sendJson(res, 201, 'application/json', context.issued.body);
}

/**
 * A replay costs no FaceID call, so it gives back the request it took from the caller's window. A refund
 * that fails costs the caller one request; it must not cost them their answer.
 */
function markReplay(res: ServerResponse, deps: BizTokenRouteDeps, caller: Caller, log: Logger): void {
  res.setHeader('Idempotent-Replayed', 'true');
  deps.metrics.idempotentReplays.inc();
  deps.rateLimiter.refund(caller.id).catch((error: unknown) => log.warn({ err: error }, 'could not give back a replayed request'));
}

function recordOutcome(metrics: Metrics, res: ServerResponse): void {
  const { code, upstream } = outcomeOf(res);
  metrics.outcomes.inc({ code });
  if (code === 'RATE_LIMITED') metrics.rateLimitRejections.inc();
  if (typeof upstream?.upstreamMs === 'number') metrics.upstreamDuration.observe({ outcome: code }, upstream.upstreamMs / 1000);
  if (typeof upstream?.faceidResult === 'string') metrics.faceidResults.inc({ result: upstream.faceidResult });
}
