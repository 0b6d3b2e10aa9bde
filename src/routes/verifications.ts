import { type Request, type Response, Router } from 'express';
import type { AuthenticateCaller } from '../auth/authenticate-caller';
import { AppError } from '../errors/app-error';
import { callerOf, contextOf } from '../http/request-context';
import type { UploadMemoryBudget } from '../limits/upload-memory-budget';
import { authenticate } from '../middleware/authenticate';
import { countUpstreamResults } from '../middleware/count-upstream-results';
import { formOf, multipartUpload, type UploadForm } from '../middleware/multipart-upload';
import { noteHttpParserRefusal } from '../middleware/note-http-parser-refusal';
import { uploadGate } from '../middleware/upload-gate';
import type { Metrics } from '../observability/metrics';
import { readVerification, type VerificationReader } from '../use-cases/read-verification';
import { bizTokenNotFound, type VerifyBizTokenDeps, verifyBizToken } from '../use-cases/verify-biz-token';

export const VERIFICATIONS_PATH = '/v1/verifications';

/** `POST /v1/verifications`: the biz_token as text, the SDK's package as a file. @see CONTRACT section 7.1 */
const VERIFICATION_FORM: UploadForm = {
  files: ['meglive_data'],
  isTextField: (name) => name === 'biz_token',
  // Any value the service did not issue is an unknown token, however long. @see CONTRACT section 7.1
  tooLong: (name) => (name === 'biz_token' ? bizTokenNotFound() : undefined),
};

export interface VerificationsRouterDeps {
  authenticateCaller: AuthenticateCaller;
  metrics: Metrics;
  uploadBudget: UploadMemoryBudget;
  useCase: VerifyBizTokenDeps;
  records: VerificationReader;
}

/**
 * `POST /v1/verifications` turns the SDK's package into a verdict; `GET /v1/verifications/{id}` reads one
 * back. No per-user rate limit here: each verification needs a live token of the caller's own, at most one
 * FaceID call is made per token, and the token route's limit already bounds the tokens.
 */
export function verificationsRouter(deps: VerificationsRouterDeps): Router {
  const router = Router();
  router.post(
    VERIFICATIONS_PATH,
    countUpstreamResults(deps.metrics),
    noteHttpParserRefusal,
    authenticate(deps.authenticateCaller),
    uploadGate(deps.uploadBudget),
    multipartUpload(VERIFICATION_FORM),
    async (req: Request, res: Response) => {
      const context = contextOf(res);
      const verified = await verifyBizToken(callerOf(res), formOf(req), deps.useCase, req.log);
      if (verified.upstream !== undefined) context.upstream = { ...verified.upstream };
      if (verified.replayed) {
        context.replayed = true;
        res.setHeader('Idempotent-Replayed', 'true');
        deps.metrics.idempotentReplays.inc();
      }
      res.location(`${VERIFICATIONS_PATH}/${verified.body.verification_id}`).status(201).json(verified.body);
    },
  );
  router.get(
    `${VERIFICATIONS_PATH}/:verificationId`,
    authenticate(deps.authenticateCaller),
    async (req: Request<{ verificationId: string }>, res: Response) => {
      const view = await readVerification(callerOf(res), req.params.verificationId, deps.records);
      if (view === undefined) throw new AppError(404, 'NOT_FOUND', 'no verification with this id is yours to read');
      res.json(view);
    },
  );
  return router;
}
