import type { Request, Response } from 'express';
import type { Logger } from 'pino';
import { pinoHttp } from 'pino-http';
import { contextOf, outcomeOf, routeOf } from '../http/request-context';

/**
 * One JSON line per request when it ends (pino-http): id, pseudonymous user, route, status, outcome code,
 * latency and the upstream facts. Requests are described by method and route only: headers carry the JWT
 * and bodies the photos, so pino-http's own request and response serializers are not used.
 */
export function requestLogger(logger: Logger) {
  return pinoHttp<Request, Response>({
    logger,
    // The line is built below from plain values; the service logger's own error serializer stays in charge.
    wrapSerializers: false,
    // The id comes from the request-id middleware; `request_id` binds it to every line the request writes (req.log).
    quietReqLogger: true,
    quietResLogger: true,
    customAttributeKeys: { reqId: 'request_id', responseTime: 'latency_ms' },
    customLogLevel: (_req, res) => (res.writableFinished && res.statusCode >= 500 ? 'error' : 'info'),
    customSuccessMessage: (req, res) => lineMessage(req, res),
    customErrorMessage: (req, res) => lineMessage(req, res),
    customSuccessObject: (req, res, value: { latency_ms: number }) => requestLine(req, res, value.latency_ms),
    customErrorObject: (req, res, _error, value: { latency_ms: number }) => {
      // A 5xx line shows its cause: the real error behind an INTERNAL_ERROR, the AppError otherwise.
      const { error } = contextOf(res);
      const cause = error?.code === 'INTERNAL_ERROR' && error.cause instanceof Error ? error.cause : error;
      return { ...requestLine(req, res, value.latency_ms), ...(cause === undefined ? {} : { err: cause }) };
    },
  });
}

function requestLine(req: Request, res: Response, latencyMs: number): Record<string, unknown> {
  const { caller, error, replayed } = contextOf(res);
  const { status, code, upstream } = outcomeOf(res);
  return {
    res: { statusCode: status },
    latency_ms: latencyMs,
    method: req.method,
    route: routeOf(req),
    user: caller?.id,
    code,
    ...(error?.param === undefined ? {} : { param: error.param }),
    ...(replayed === true ? { idempotent_replay: true } : {}),
    ...(upstream === undefined ? {} : { upstream }),
  };
}

const lineMessage = (req: Request, res: Response): string => `${req.method} ${routeOf(req)} ${outcomeOf(res).status}`;
