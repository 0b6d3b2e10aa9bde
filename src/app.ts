import cors from 'cors';
import express, { type Express } from 'express';
import helmet from 'helmet';
import type { Logger } from 'pino';
import { createCallerAuthenticator } from './auth/authenticate-caller';
import type { Config, FaceIdCredentials } from './config/load-config';
import { FaceIdClient } from './faceid/faceid-client';
import { createMemoryIdempotencyStore } from './idempotency/memory-idempotency-store';
import { createRedisIdempotencyStore } from './idempotency/redis-idempotency-store';
import { createResilientIdempotencyStore } from './idempotency/resilient-idempotency-store';
import { createCircuitBreaker } from './limits/circuit-breaker';
import { connectSharedStore, type SharedStore } from './limits/shared-store';
import { createUploadMemoryBudget } from './limits/upload-memory-budget';
import { createUpstreamBudget } from './limits/upstream-budget';
import { createUpstreamGate } from './limits/upstream-gate';
import { createUserRateLimiter } from './limits/user-rate-limiter';
import { closeConnectionsWhileDraining } from './middleware/close-connections-while-draining';
import { errorHandler, notFound } from './middleware/error-handler';
import { measureRequests } from './middleware/measure-requests';
import { requestId } from './middleware/request-id';
import { requestLogger } from './middleware/request-logger';
import { createMetrics, type Metrics } from './observability/metrics';
import { buildOpenApiDocument } from './openapi/openapi-document';
import { bizTokensRouter } from './routes/biz-tokens';
import { opsRouter, type Readiness } from './routes/ops';
import { verificationsRouter } from './routes/verifications';
import { createRedisExpiringStore, createResilientExpiringStore, type ExpiringStore } from './storage/expiring-store';
import type { IssueBizTokenDeps } from './use-cases/issue-biz-token';
import type { VerifyBizTokenDeps } from './use-cases/verify-biz-token';
import { createBizTokenRegistry, type IssuedBizToken } from './verification/biz-token-registry';
import { reasonLabel } from './verification/verdict';
import type { VerificationRecord } from './verification/verification-record';
import { createDeliveryQueue } from './webhooks/create-delivery-queue';
import type { DeliveryQueue } from './webhooks/delivery-queue';
import { verificationEventBody } from './webhooks/verification-event';

/** Everything the app needs, built once at start-up; `close` releases what holds sockets. */
export interface Service {
  app: Express;
  metrics: Metrics;
  shared: SharedStore;
  /** Marks the service as shutting down: /readyz turns 503 and answers close their connections. */
  beginShutdown: () => void;
  close: () => Promise<void>;
}

/** How long a second request with the same Idempotency-Key waits for the first one, beyond FaceID's own bound. */
const IDEMPOTENCY_WAIT_MARGIN_MS = 2_000;

/** Headers a browser app may read when CORS_ORIGINS lets it call the service. */
const EXPOSED_HEADERS = ['X-Request-Id', 'RateLimit', 'RateLimit-Policy', 'Retry-After', 'Idempotent-Replayed'];

/** Builds the Express app and its collaborators; it never listens (server.ts does). */
export function createService(config: Config, credentials: FaceIdCredentials, logger: Logger): Service {
  const faceid = new FaceIdClient({
    baseUrl: config.faceid.baseUrl,
    credentials,
    timeoutMs: config.faceid.timeoutMs,
    maxRetries: config.faceid.maxRetries,
    maxSockets: config.faceid.maxConcurrency,
  });
  const shared = connectSharedStore(config.redis, logger);
  const gate = createUpstreamGate(config.faceid.maxConcurrency, config.faceid.queueTimeoutMs);
  const breaker = createCircuitBreaker({
    failureThreshold: config.faceid.breakerFailures,
    openMs: config.faceid.breakerOpenMs,
    log: logger.child({ component: 'faceid-circuit' }),
  });
  const uploadBudget = createUploadMemoryBudget(config.uploads.memoryBytes, config.uploads.queueTimeoutMs);
  let deliveries: DeliveryQueue | undefined;
  const metrics = createMetrics({ gate, breaker, uploadBudget, webhookBacklog: () => deliveries?.pending() });
  deliveries = createDeliveryQueue(config, metrics, logger);

  const sharedIsReady = (): boolean => shared.state() === 'ready';
  const local = createMemoryIdempotencyStore();
  const idempotency =
    shared.redis === undefined
      ? local
      : createResilientIdempotencyStore(createRedisIdempotencyStore(shared.redis), local, sharedIsReady);
  const sharedRecords = <T>(prefix: string): ExpiringStore<T> =>
    createResilientExpiringStore<T>(
      shared.redis === undefined ? undefined : createRedisExpiringStore<T>(shared.redis, prefix),
      sharedIsReady,
      logger,
    );
  const tokens = createBizTokenRegistry(sharedRecords<IssuedBizToken>('biz-token:'));
  const records = sharedRecords<VerificationRecord>('verification:');
  const budget = createUpstreamBudget(config.faceid.dailyBudget, shared, logger);
  const waitMs = config.faceid.timeoutMs + config.faceid.queueTimeoutMs + IDEMPOTENCY_WAIT_MARGIN_MS;
  const issueToken: IssueBizTokenDeps = {
    faceid,
    idempotency,
    budget,
    gate,
    breaker,
    validation: { policy: config.policy, clientSendsUuid: config.auth.mode === 'none' },
    idempotencyWaitMs: waitMs,
    tokens,
  };
  const verifyToken: VerifyBizTokenDeps = {
    faceid,
    tokens,
    idempotency,
    budget,
    gate,
    breaker,
    policy: { forceCompare: config.policy.forceCompare === '1', falseAcceptRate: config.policy.falseAcceptRate },
    waitMs,
    sink: {
      keep: (record) => records.put(record.data.verification_id, record, config.verificationRetentionMs),
      announce: async (data, imageBest) => {
        await deliveries?.enqueue({
          // Stable across attempts, as Standard Webhooks asks.
          webhookId: `msg_${data.verification_id.slice('vf_'.length)}`,
          body: verificationEventBody(data, config.webhook.includeImage ? imageBest : undefined),
          queuedAt: Date.now(),
        });
      },
      counted: (decision) => metrics.verdicts.inc({ verdict: decision.verdict, reason: reasonLabel(decision.reason) }),
    },
  };
  let draining = false;
  const readiness: Readiness = () => ({ shuttingDown: draining, redis: shared.state() });

  const app = express();
  app.disable('x-powered-by');
  app.set('trust proxy', config.trustProxy);

  // Every request, whatever its route: the chain a newcomer reads top to bottom.
  app.use(closeConnectionsWhileDraining(() => draining));
  app.use(requestId);
  app.use(requestLogger(logger));
  app.use(helmet());
  // Without origins, cors would only pass every request on.
  if (config.corsOrigins.length > 0) app.use(cors({ origin: config.corsOrigins, exposedHeaders: EXPOSED_HEADERS }));
  app.use(measureRequests(metrics));

  const authenticateCaller = createCallerAuthenticator(config.auth, logger);
  app.use(
    bizTokensRouter({
      authenticateCaller,
      rateLimiter: createUserRateLimiter(config.rateLimit, shared),
      metrics,
      uploadBudget,
      useCase: issueToken,
    }),
  );
  app.use(verificationsRouter({ authenticateCaller, metrics, uploadBudget, useCase: verifyToken, records }));
  app.use(
    opsRouter({
      readiness,
      metrics: config.metricsPort === undefined ? metrics : undefined,
      docsEnabled: config.docsEnabled,
      openApiDocument: buildOpenApiDocument(config),
    }),
  );
  app.use(notFound);
  app.use(errorHandler);

  return {
    app,
    metrics,
    shared,
    beginShutdown: () => {
      draining = true;
    },
    close: async () => {
      faceid.close();
      await deliveries?.close();
      await shared.close();
    },
  };
}
