import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type { AuthenticateCaller, Caller } from '../auth/authenticate-caller';
import { AppError } from '../errors/app-error';
import { contextOf } from '../http/request-context';
import type { UploadMemoryBudget } from '../limits/upload-memory-budget';
import type { UserRateLimiter } from '../limits/user-rate-limiter';
import { authenticate } from '../middleware/authenticate';
import { writeProblem } from '../middleware/error-handler';
import { idempotencyKeyOf } from '../middleware/idempotency-key';
import { readMultipartForm } from '../middleware/parse-multipart';
import { rateLimitPolicy, refuseUnlessReplayable, spendRequest } from '../middleware/rate-limit';
import type { Metrics } from '../observability/metrics';
import { issueBizToken, type IssueBizTokenDeps, type IssuedToken } from '../use-cases/issue-biz-token';

export const BIZ_TOKENS_PATH = '/v1/biz-tokens';

export interface BizTokenRouteDeps {
  /** For a request that reached the route without the request logger's child (never, in app.ts). */
  logger: Logger;
  authenticateCaller: AuthenticateCaller;
  clientAddress: (req: IncomingMessage) => string;
  rateLimiter: UserRateLimiter;
  metrics: Metrics;
  uploadBudget: UploadMemoryBudget;
  useCase: IssueBizTokenDeps;
}

/** Whether a request is for this route; anything else on the path (GET, OPTIONS) is Express's. */
export const isBizTokenRequest = (req: IncomingMessage): boolean => req.method === 'POST' && (req.url ?? '').split('?')[0] === BIZ_TOKENS_PATH;

/**
 * `POST /v1/biz-tokens`: who asks, how often, what they sent, then the use case. Plain node:http, not an
 * Express route: Express's per-request work cost about a tenth of a CPU-millisecond here, a sixth of the
 * whole budget (see BENCHMARKS.md).
 */
export function bizTokenRoute(deps: BizTokenRouteDeps): (req: IncomingMessage, res: ServerResponse) => void {
  const policy = rateLimitPolicy(deps.rateLimiter);
  const identify = authenticate(deps.authenticateCaller, deps.clientAddress);
  return (req, res) => {
    const context = contextOf(res);
    context.route = BIZ_TOKENS_PATH;
    res.setHeader('RateLimit-Policy', policy);
    res.once('close', () => recordOutcome(deps.metrics, res));
    answer(req, res, deps, identify).catch((error: unknown) => writeProblem(res, error));
  };
}

async function answer(
  req: IncomingMessage,
  res: ServerResponse,
  deps: BizTokenRouteDeps,
  identify: (req: IncomingMessage) => Promise<Caller>,
): Promise<void> {
  const context = contextOf(res);
  const caller = await identify(req);
  context.caller = caller;
  // Spent before the key is checked: every authenticated request counts, a malformed key included.
  const rateLimitRefusal = await spendRequest(deps.rateLimiter, caller, res, req.headers['idempotency-key'] !== undefined);
  const idempotencyKey = idempotencyKeyOf(req.headers);
  if (rateLimitRefusal !== undefined) await refuseUnlessReplayable(deps.useCase.idempotency, caller, idempotencyKey, rateLimitRefusal);
  const form = await readMultipartForm(req, res, deps.uploadBudget);
  if (form === undefined) return;
  let issued: IssuedToken;
  try {
    issued = await issueBizToken({ caller, form, idempotencyKey, rateLimitRefusal }, deps.useCase, context.log ?? deps.logger);
  } catch (error) {
    if (error instanceof AppError && error.logContext?.idempotentReplay === true) await markReplay(res, deps, caller);
    throw error;
  }
  context.issued = issued;
  if (issued.replayed) await markReplay(res, deps, caller);
  const body = JSON.stringify(issued.body);
  res.statusCode = 201;
  res.setHeader('Content-Type', 'application/json; charset=utf-8');
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.end(body);
}

/** A replay costs no FaceID call, so it gives back the request it took from the caller's window. */
async function markReplay(res: ServerResponse, deps: BizTokenRouteDeps, caller: Caller): Promise<void> {
  res.setHeader('Idempotent-Replayed', 'true');
  deps.metrics.idempotentReplays.inc();
  await deps.rateLimiter.refund(caller.id);
}

/** The outcome is CLIENT_CLOSED when the client left before the answer was sent. */
function recordOutcome(metrics: Metrics, res: ServerResponse): void {
  const { error, issued } = contextOf(res);
  const code = !res.writableFinished ? 'CLIENT_CLOSED' : (error?.code ?? 'OK');
  metrics.outcomes.inc({ code });
  if (code === 'RATE_LIMITED') metrics.rateLimitRejections.inc();
  const upstream: Record<string, unknown> | undefined = issued?.upstream ?? error?.logContext;
  if (typeof upstream?.upstreamMs === 'number') metrics.upstreamDuration.observe({ outcome: code }, upstream.upstreamMs / 1000);
  if (typeof upstream?.faceidResult === 'string') metrics.faceidResults.inc({ result: upstream.faceidResult });
}
