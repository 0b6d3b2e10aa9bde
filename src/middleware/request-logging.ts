import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { pinoHttp } from 'pino-http';
import { contextOf, routeOf } from '../http/request-context';

/**
 * One JSON line per request: id, pseudonymous user, route, status, outcome code, latency and the upstream
 * facts. Requests are described by method and path only: headers carry the JWT and bodies the photos.
 */
export function requestLogging(logger: Logger) {
  return pinoHttp({
    logger,
    genReqId: (_req: IncomingMessage, res: ServerResponse) => contextOf(res).requestId,
    // Every line logged during a request carries its id; the request itself is described by outcomeOf.
    quietReqLogger: true,
    quietResLogger: true,
    wrapSerializers: false,
    // Whatever else binds `req` or `res` gets these: never headers (the JWT) or bodies (the photos).
    serializers: {
      req: (req: IncomingMessage) => ({ method: req.method, path: (req.url ?? '').split('?')[0]?.slice(0, 200) }),
      res: (res: ServerResponse) => ({ statusCode: res.statusCode }),
    },
    customAttributeKeys: { reqId: 'request_id', responseTime: 'latency_ms' },
    customLogLevel: (_req, res, error) => (error !== undefined || res.statusCode >= 500 ? 'error' : 'info'),
    customSuccessMessage: (req, res) => `${req.method} ${routeOf(req, res)} ${res.statusCode}`,
    customErrorMessage: (req, res) => `${req.method} ${routeOf(req, res)} ${res.statusCode}`,
    customSuccessObject: (req, res, fields: object) => ({ ...fields, ...outcomeOf(req, res) }),
    customErrorObject: (req, res, _error, fields: object) => ({ ...fields, ...outcomeOf(req, res) }),
  });
}

function outcomeOf(req: IncomingMessage, res: ServerResponse): Record<string, unknown> {
  const { caller, error, issued } = contextOf(res);
  const upstream = issued?.upstream ?? (error?.logContext as Record<string, unknown> | undefined);
  return {
    method: req.method,
    route: routeOf(req, res),
    user: caller?.id,
    code: error?.code ?? (res.statusCode < 400 ? 'OK' : undefined),
    ...(error?.param === undefined ? {} : { param: error.param }),
    ...(issued?.replayed === true ? { idempotent_replay: true } : {}),
    ...(upstream === undefined ? {} : { upstream }),
  };
}
