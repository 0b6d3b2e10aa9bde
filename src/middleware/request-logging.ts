import type { Logger } from 'pino';
import type { FrontStep } from '../http/front-step';
import { contextOf, outcomeOf, routeOf } from '../http/request-context';

/**
 * One JSON line per request when it closes: id, pseudonymous user, route, status, outcome code, latency and
 * the upstream facts. Requests are described by method and route only: headers carry the JWT and bodies
 * the photos.
 *
 * Written here rather than with pino-http: pino-http hangs its loggers and timers on every request and
 * response object, which cost about 0.2 CPU-ms per token request here (see README, "Performance").
 */
export function requestLogging(logger: Logger): FrontStep {
  return (req, res, next) => {
    const started = performance.now();
    res.once('close', () => {
      const { requestId, caller, error, issued } = contextOf(res);
      const { code, upstream } = outcomeOf(res);
      const route = routeOf(req, res);
      const line = {
        request_id: requestId,
        res: { statusCode: res.statusCode },
        latency_ms: Math.round(performance.now() - started),
        method: req.method,
        route,
        user: caller?.id,
        code,
        ...(error?.param === undefined ? {} : { param: error.param }),
        ...(issued?.replayed === true ? { idempotent_replay: true } : {}),
        ...(upstream === undefined ? {} : { upstream }),
      };
      const message = `${req.method} ${route} ${res.statusCode}`;
      // A 5xx line shows its cause: the real error behind an INTERNAL_ERROR, the AppError otherwise.
      if (res.writableFinished && res.statusCode >= 500) {
        const cause = error?.code === 'INTERNAL_ERROR' && error.cause instanceof Error ? error.cause : error;
        logger.error({ ...line, err: cause }, message);
      } else logger.info(line, message);
    });
    next();
  };
}
