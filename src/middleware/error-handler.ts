import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import type { ErrorRequestHandler } from 'express';
import { AppError } from '../errors/app-error';
import { contextOf } from '../http/request-context';
import { sendJson } from '../http/response';

/**
 * The one place errors become answers: RFC 9457 problem+json. A 5xx never shows its cause to the caller;
 * the log line (written by the request logger from the request's context) keeps it. Used by the token
 * route directly and by Express through `errorHandler`.
 */
export function writeProblem(res: ServerResponse, error: unknown): void {
  const appError = toAppError(error);
  const context = contextOf(res);
  context.error = appError;
  if (res.headersSent || res.destroyed) return;
  if (appError.retryAfterSeconds !== undefined) res.setHeader('Retry-After', String(appError.retryAfterSeconds));
  if (appError.status === 401) res.setHeader('WWW-Authenticate', 'Bearer');
  sendJson(res, appError.status, 'application/problem+json', {
    type: 'about:blank',
    title: STATUS_CODES[appError.status] ?? 'Error',
    status: appError.status,
    code: appError.code,
    ...(appError.param === undefined ? {} : { param: appError.param }),
    detail: appError.message,
    request_id: context.requestId,
  });
}

export const errorHandler: ErrorRequestHandler = (error: unknown, _req, res, next) => {
  if (res.headersSent) {
    next(error);
    return;
  }
  writeProblem(res, error);
};

export function notFound(req: IncomingMessage & { path?: string }, _res: ServerResponse, next: (error: AppError) => void): void {
  next(new AppError(404, 'NOT_FOUND', `no route for ${req.method} ${req.path ?? ''}`.slice(0, 200)));
}

function toAppError(error: unknown): AppError {
  if (error instanceof AppError) return error;
  // Express's router and static files fail with a 4xx status (a malformed path, say): the caller's mistake.
  const status = (error as { status?: unknown } | undefined)?.status;
  if (typeof status === 'number' && status >= 400 && status < 500) {
    return new AppError(400, 'BAD_ARGUMENTS', 'the request could not be read', { cause: error });
  }
  return new AppError(500, 'INTERNAL_ERROR', 'an internal error occurred; it has been logged', { cause: error });
}
