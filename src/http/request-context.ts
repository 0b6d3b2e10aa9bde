import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
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
  /** Carries the request id into every line logged while the request is answered. */
  log?: Logger;
  caller?: Caller;
  error?: AppError;
  /** For the log line of a 5xx: the bug behind an INTERNAL_ERROR. */
  cause?: Error;
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
