import { type Request, type Response, Router } from 'express';
import type { Logger } from 'pino';
import type { AuthenticateCaller, Caller } from '../auth/authenticate-caller';
import { AppError } from '../errors/app-error';
import { callerOf, contextOf } from '../http/request-context';
import type { UploadMemoryBudget } from '../limits/upload-memory-budget';
import type { UserRateLimiter } from '../limits/user-rate-limiter';
import { authenticate } from '../middleware/authenticate';
import { countTokenOutcomes } from '../middleware/count-token-outcomes';
import { countUpstreamResults } from '../middleware/count-upstream-results';
import { idempotencyKey } from '../middleware/idempotency-key';
import { formOf, multipartUpload, TOKEN_FORM } from '../middleware/multipart-upload';
import { noteHttpParserRefusal } from '../middleware/note-http-parser-refusal';
import { announceRateLimitPolicy, spendRateLimit } from '../middleware/rate-limit';
import { uploadGate } from '../middleware/upload-gate';
import type { Metrics } from '../observability/metrics';
import { type IssueBizTokenDeps, type IssuedToken, issueBizToken } from '../use-cases/issue-biz-token';

export const BIZ_TOKENS_PATH = '/v1/biz-tokens';

export interface BizTokensRouterDeps {
  authenticateCaller: AuthenticateCaller;
  rateLimiter: UserRateLimiter;
  metrics: Metrics;
  uploadBudget: UploadMemoryBudget;
  useCase: IssueBizTokenDeps;
}

/**
 * `POST /v1/biz-tokens`: who asks, how often, under which Idempotency-Key, whether the upload may be read,
 * the upload itself, then the use case. Everything before the upload gate runs before a byte of the body
 * is read.
 */
export function bizTokensRouter(deps: BizTokensRouterDeps): Router {
  const router = Router();
  router.post(
    BIZ_TOKENS_PATH,
    countTokenOutcomes(deps.metrics),
    countUpstreamResults(deps.metrics),
    noteHttpParserRefusal,
    announceRateLimitPolicy(deps.rateLimiter),
    authenticate(deps.authenticateCaller),
    spendRateLimit(deps.rateLimiter),
    idempotencyKey(deps.useCase.idempotency),
    uploadGate(deps.uploadBudget),
    multipartUpload(TOKEN_FORM),
    async (req: Request, res: Response) => {
      const context = contextOf(res);
      const caller = callerOf(res);
      const input = {
        caller,
        form: formOf(req),
        idempotencyKey: context.idempotencyKey,
        completedBefore: context.completedBefore,
      };
      let issued: IssuedToken;
      try {
        issued = await issueBizToken(input, deps.useCase, req.log);
      } catch (error) {
        if (error instanceof AppError && error.logContext?.idempotentReplay === true)
          markReplay(res, deps, caller, req.log);
        throw error;
      }
      if (issued.upstream !== undefined) context.upstream = { ...issued.upstream };
      if (issued.replayed) markReplay(res, deps, caller, req.log);
      res.status(201).json(issued.body);
    },
  );
  return router;
}

/**
 * A replay costs no FaceID call, so it gives back the request it took from the caller's window. A refund
 * that fails costs the caller one request; it must not cost them their response.
 */
function markReplay(res: Response, deps: BizTokensRouterDeps, caller: Caller, log: Logger): void {
  res.setHeader('Idempotent-Replayed', 'true');
  contextOf(res).replayed = true;
  deps.metrics.idempotentReplays.inc();
  deps.rateLimiter
    .refund(caller.id)
    .catch((error: unknown) => log.warn({ err: error }, 'could not give back a replayed request'));
}
