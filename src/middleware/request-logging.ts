import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { contextOf, routeOf } from '../http/request-context';

/**
 * One JSON line per request when it closes: id, pseudonymous user, route, status, outcome code, latency and
 * the upstream facts. Requests are described by method and route only: headers carry the JWT and bodies
 * the photos. Lines logged while a request is answered carry its id (the context's child logger).
 *
 * Written here rather than with pino-http: pino-http hangs its loggers and timers on every request and
 * response object, which cost about 0.2 CPU-ms per token request here (see README, "Performance").
 */
export function requestLogging(logger: Logger) {
  return (req: IncomingMessage, res: ServerResponse, next: () => void): void => {
    const started = performance.now();
    const context = contextOf(res);
    context.log = logger.child({ request_id: context.requestId });
    res.once('close', () => {
      const line = {
        request_id: context.requestId,
        res: { statusCode: res.statusCode },
        latency_ms: Math.round(performance.now() - started),
        ...outcomeOf(req, res),
      };
      const message = `${req.method} ${routeOf(req, res)} ${res.statusCode}`;
      // A 5xx line shows its cause: the real error behind an INTERNAL_ERROR, the AppError otherwise.
      if (res.writableFinished && res.statusCode >= 500) logger.error({ ...line, err: context.cause ?? context.error }, message);
      else logger.info(line, message);
    });
    next();
  };
}

function outcomeOf(req: IncomingMessage, res: ServerResponse): Record<string, unknown> {
  const { caller, error, issued } = contextOf(res);
  const upstream = issued?.upstream ?? (error?.logContext as Record<string, unknown> | undefined);
  return {
    method: req.method,
    route: routeOf(req, res),
    user: caller?.id,
    code: !res.writableFinished ? 'CLIENT_CLOSED' : (error?.code ?? (res.statusCode < 400 ? 'OK' : undefined)),
    ...(error?.param === undefined ? {} : { param: error.param }),
    ...(issued?.replayed === true ? { idempotent_replay: true } : {}),
    ...(upstream === undefined ? {} : { upstream }),
  };
}
