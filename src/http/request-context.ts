import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Caller } from '../auth/authenticate-caller';
import type { AppError } from '../errors/app-error';
import type { IssuedToken } from '../use-cases/issue-biz-token';

/**
 * What one request has learnt so far, for its log line, its metrics and its problem answer. Kept beside the
 * response rather than on it, so the token route (plain node:http) and the Express routes share it.
 */
export interface RequestContext {
  requestId: string;
  /** The route pattern, never the raw path; set by the token route, else Express's matched route. */
  route: string | undefined;
  caller?: Caller;
  error?: AppError;
  issued?: IssuedToken;
}

const contexts = new WeakMap<ServerResponse, RequestContext>();

export function contextOf(res: ServerResponse): RequestContext {
  let context = contexts.get(res);
  if (context === undefined) {
    context = { requestId: '', route: undefined };
    contexts.set(res, context);
  }
  return context;
}

/** The route pattern for logs and metrics, so paths with ids or junk never become free-form values. */
export function routeOf(req: IncomingMessage, res: ServerResponse): string {
  const expressRoute = (req as IncomingMessage & { route?: { path?: unknown } }).route;
  return contextOf(res).route ?? (typeof expressRoute?.path === 'string' ? expressRoute.path : 'unmatched');
}

/**
 * How the request ended, for its log line and the metrics alike: the service's code (`CLIENT_CLOSED` when
 * the client left before the answer was out) and the upstream facts when FaceID was asked.
 */
export function outcomeOf(res: ServerResponse): { code: string; upstream: Record<string, unknown> | undefined } {
  const { error, issued } = contextOf(res);
  return {
    code: !res.writableFinished ? 'CLIENT_CLOSED' : (error?.code ?? 'OK'),
    upstream: issued?.upstream ?? error?.logContext,
  };
}
