import { Router } from 'express';
import type { Caller } from '../auth/authenticate-caller';
import { AppError } from '../errors/app-error';
import type { UploadMemoryBudget } from '../limits/upload-memory-budget';
import type { UserRateLimiter } from '../limits/user-rate-limiter';
import { authenticate } from '../middleware/authenticate';
import { idempotencyKey } from '../middleware/idempotency-key';
import { parseMultipart } from '../middleware/parse-multipart';
import { rateLimit, rateLimitPolicy, refuseUnlessReplayable } from '../middleware/rate-limit';
import type { AuthenticateCaller } from '../auth/authenticate-caller';
import type { Metrics } from '../observability/metrics';
import { issueBizToken, type IssueBizTokenDeps, type IssuedToken } from '../use-cases/issue-biz-token';
import type { MultipartForm } from '../token-request/multipart-form';

export interface BizTokenRouteDeps {
  authenticateCaller: AuthenticateCaller;
  rateLimiter: UserRateLimiter;
  metrics: Metrics;
  uploadBudget: UploadMemoryBudget;
  useCase: IssueBizTokenDeps;
}

/** `POST /v1/biz-tokens`: who asks, how often, what they sent, then the use case. */
export function bizTokenRoutes(deps: BizTokenRouteDeps): Router {
  const router = Router();
  const policy = rateLimitPolicy(deps.rateLimiter);
  router.post(
    '/v1/biz-tokens',
    (_req, res, next) => {
      res.setHeader('RateLimit-Policy', policy);
      res.once('close', () => recordOutcome(deps.metrics, res.locals, res.writableFinished ? res.statusCode : undefined));
      next();
    },
    authenticate(deps.authenticateCaller),
    rateLimit(deps.rateLimiter),
    idempotencyKey,
    refuseUnlessReplayable(deps.useCase.idempotency),
    parseMultipart(deps.uploadBudget),
    async (req, res) => {
      const caller = res.locals.caller as Caller;
      let issued: IssuedToken;
      try {
        issued = await issueBizToken(
          {
            caller,
            form: res.locals.form as MultipartForm,
            idempotencyKey: res.locals.idempotencyKey as string | undefined,
            rateLimitRefusal: res.locals.rateLimitRefusal as AppError | undefined,
          },
          deps.useCase,
          req.log,
        );
      } catch (error) {
        if (error instanceof AppError && error.logContext?.idempotentReplay === true) await markReplay(res.setHeader.bind(res), deps, caller);
        throw error;
      }
      res.locals.issued = issued;
      if (issued.replayed) await markReplay(res.setHeader.bind(res), deps, caller);
      res.status(201).json(issued.body);
    },
  );
  return router;
}

/** A replay costs no FaceID call, so it gives back the request it took from the caller's window. */
async function markReplay(setHeader: (name: string, value: string) => unknown, deps: BizTokenRouteDeps, caller: Caller): Promise<void> {
  setHeader('Idempotent-Replayed', 'true');
  deps.metrics.idempotentReplays.inc();
  await deps.rateLimiter.refund(caller.id);
}

/** `status` is undefined when the client left before the answer was sent. */
function recordOutcome(metrics: Metrics, locals: Record<string, unknown>, status: number | undefined): void {
  const error = locals.error as AppError | undefined;
  const code = status === undefined ? 'CLIENT_CLOSED' : (error?.code ?? 'OK');
  metrics.outcomes.inc({ code });
  if (code === 'RATE_LIMITED') metrics.rateLimitRejections.inc();
  const issued = locals.issued as IssuedToken | undefined;
  const upstream: Record<string, unknown> | undefined = issued?.upstream ?? error?.logContext;
  if (typeof upstream?.upstreamMs === 'number') metrics.upstreamDuration.observe({ outcome: code }, upstream.upstreamMs / 1000);
  if (typeof upstream?.faceidResult === 'string') metrics.faceidResults.inc({ result: upstream.faceidResult });
}
