import cors from 'cors';
import express from 'express';
import type { IncomingMessage, RequestListener, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { createCallerAuthenticator } from './auth/authenticate-caller';
import type { Config, FaceIdCredentials } from './config/load-config';
import { FaceIdClient } from './faceid/faceid-client';
import { createMemoryIdempotencyStore } from './idempotency/memory-idempotency-store';
import { createRedisIdempotencyStore } from './idempotency/redis-idempotency-store';
import { createResilientIdempotencyStore } from './idempotency/resilient-idempotency-store';
import { connectSharedStore, type SharedStore } from './limits/shared-store';
import { createUpstreamBudget } from './limits/upstream-budget';
import { createCircuitBreaker } from './limits/circuit-breaker';
import { createUploadBufferPool } from './limits/upload-buffer-pool';
import { createUploadMemoryBudget } from './limits/upload-memory-budget';
import { createUpstreamGate } from './limits/upstream-gate';
import { createUserRateLimiter } from './limits/user-rate-limiter';
import type { FrontStep } from './http/front-step';
import { securityHeaders } from './http/security-headers';
import { clientAddressOf, type TrustProxy } from './middleware/authenticate';
import { errorHandler, notFound, writeProblem } from './middleware/error-handler';
import { requestId } from './middleware/request-id';
import { requestLogging } from './middleware/request-logging';
import { createMetrics, measureRequests, type Metrics } from './observability/metrics';
import { buildOpenApiDocument } from './openapi/openapi-document';
import { bizTokenRoute, isBizTokenRequest } from './routes/biz-tokens';
import { opsRoutes, type Readiness } from './routes/ops';
import type { IssueBizTokenDeps } from './use-cases/issue-biz-token';

/** Everything the app needs, built once at start-up; `close` releases what holds sockets. */
export interface Service {
  /** The token route on plain node:http, everything else through Express. */
  handler: RequestListener;
  metrics: Metrics;
  shared: SharedStore;
  /** Marks the service as shutting down: /readyz turns 503. */
  beginShutdown: () => void;
  close: () => Promise<void>;
}

/** How long a second request with the same Idempotency-Key waits for the first one, beyond FaceID's own bound. */
const IDEMPOTENCY_WAIT_MARGIN_MS = 2_000;

/** Builds the request handler (the token route and the Express app) and its collaborators; it never listens (server.ts does). */
export function createService(config: Config, credentials: FaceIdCredentials, logger: Logger): Service {
  const client = new FaceIdClient({
    baseUrl: config.faceid.baseUrl,
    credentials,
    timeoutMs: config.faceid.timeoutMs,
    maxRetries: config.faceid.maxRetries,
    maxIdleConnections: config.faceid.maxConcurrency,
  });
  const shared = connectSharedStore(config.redis, logger);
  const gate = createUpstreamGate(config.faceid.maxConcurrency, config.faceid.queueTimeoutMs);
  const breaker = createCircuitBreaker({
    failureThreshold: config.faceid.breakerFailures,
    openMs: config.faceid.breakerOpenMs,
    log: logger.child({ component: 'faceid-circuit' }),
  });
  const uploadBudget = createUploadMemoryBudget(config.uploads.memoryBytes, config.uploads.queueTimeoutMs);
  const uploadBuffers = createUploadBufferPool(config.uploads.memoryBytes);
  const metrics = createMetrics({ gate, breaker, uploadBudget });
  const local = createMemoryIdempotencyStore();
  const useCase: IssueBizTokenDeps = {
    faceid: client,
    idempotency:
      shared.redis === undefined
        ? local
        : createResilientIdempotencyStore(createRedisIdempotencyStore(shared.redis), local, () => shared.state() === 'ready'),
    budget: createUpstreamBudget(config.faceid.dailyBudget, shared, logger),
    gate,
    breaker,
    validation: { policy: config.policy, clientSendsUuid: config.auth.mode === 'none' },
    idempotencyWaitMs: config.faceid.timeoutMs + config.faceid.queueTimeoutMs + IDEMPOTENCY_WAIT_MARGIN_MS,
  };
  let shuttingDown = false;
  const readiness: Readiness = () => ({ shuttingDown, redis: shared.state() });

  const app = express();
  app.disable('x-powered-by');
  app.set('trust proxy', config.trustProxy);

  // Every request passes the same front steps, whichever side then answers it.
  const front: FrontStep[] = [
    (_req, res, next) => {
      // While draining for shutdown, every answer closes its connection.
      if (shuttingDown) res.setHeader('Connection', 'close');
      next();
    },
    requestId,
    requestLogging(logger),
    measureRequests(metrics),
    securityHeaders(),
    // Without origins, cors would only pass every request on.
    ...(config.corsOrigins.length > 0 ? [cors({ origin: config.corsOrigins, exposedHeaders: EXPOSED_HEADERS })] : []),
  ];
  const tokenRoute = bizTokenRoute({
    logger,
    authenticateCaller: createCallerAuthenticator(config.auth, logger),
    clientAddress: clientAddressOf(app.get('trust proxy fn') as TrustProxy),
    rateLimiter: createUserRateLimiter(config.rateLimit, shared),
    metrics,
    uploadBudget,
    uploadBuffers,
    useCase,
  });

  app.use(...front);
  app.use(
    opsRoutes({
      readiness,
      metrics: config.metricsPort === undefined ? metrics : undefined,
      docsEnabled: config.docsEnabled,
      openApiDocument: buildOpenApiDocument(config),
    }),
  );
  app.use(notFound);
  app.use(errorHandler);

  return {
    handler: (req, res) => {
      if (isBizTokenRequest(req)) runFront(front, req, res, () => tokenRoute(req, res));
      else app(req, res);
    },
    metrics,
    shared,
    beginShutdown: () => {
      shuttingDown = true;
    },
    close: async () => {
      client.close();
      await shared.close();
    },
  };
}

/** Runs the front steps in order, as Express would, then the route; a step's error, passed or thrown, becomes the answer. */
function runFront(steps: readonly FrontStep[], req: IncomingMessage, res: ServerResponse, route: () => void): void {
  let index = 0;
  const next = (error?: unknown): void => {
    if (error !== undefined) {
      writeProblem(res, error);
      return;
    }
    const step = steps[index];
    index += 1;
    try {
      if (step === undefined) route();
      else step(req, res, next);
    } catch (thrown) {
      writeProblem(res, thrown);
    }
  };
  next();
}

const EXPOSED_HEADERS = ['X-Request-Id', 'RateLimit', 'RateLimit-Policy', 'Retry-After', 'Idempotent-Replayed'];
