import { type Response, Router } from 'express';
import type { SharedStore } from '../limits/shared-store';
import type { Metrics } from '../observability/metrics';
import { apiDocsRoutes } from './api-docs';

export type Readiness = () => { shuttingDown: boolean; redis: ReturnType<SharedStore['state']> };

export interface OpsRouterDeps {
  readiness: Readiness;
  /** Undefined when metrics are served on their own METRICS_PORT instead. */
  metrics: Metrics | undefined;
  docsEnabled: boolean;
  openApiDocument: Record<string, unknown>;
}

const REDIS_CHECK: Record<ReturnType<Readiness>['redis'], string> = {
  'not-configured': 'not configured: limits are per process',
  ready: 'ok',
  unavailable: 'unreachable: per-process limits and idempotency until it returns',
};

/** Health, readiness and metrics for operators; the API's description for developers. */
export function opsRouter(deps: OpsRouterDeps): Router {
  const router = Router();
  router.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });
  // A Redis outage degrades the service but does not stop it: taking every instance out of the load
  // balancer because the shared store blinked would turn a degraded service into no service.
  router.get('/readyz', (_req, res) => {
    const { shuttingDown, redis } = deps.readiness();
    const status = shuttingDown ? 'not-ready' : redis === 'unavailable' ? 'degraded' : 'ready';
    res.status(shuttingDown ? 503 : 200).json({
      status,
      checks: { config: 'ok', redis: REDIS_CHECK[redis], shutdown: shuttingDown ? 'shutting down' : 'ok' },
    });
  });
  if (deps.metrics !== undefined) router.get('/metrics', metricsHandler(deps.metrics));
  const openApiText = JSON.stringify(deps.openApiDocument);
  router.get('/openapi.json', (_req, res) => {
    res.type('application/json').send(openApiText);
  });
  if (deps.docsEnabled) router.use(apiDocsRoutes());
  return router;
}

export function metricsHandler(metrics: Metrics) {
  return async (_req: unknown, res: Response): Promise<void> => {
    res.type(metrics.registry.contentType).send(await metrics.registry.metrics());
  };
}
