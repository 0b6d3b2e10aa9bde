import { STATUS_CODES } from 'node:http';
import type { ErrorRequestHandler, Request, RequestHandler, Response } from 'express';
import { AppError } from '../errors/app-error';
import { contextOf } from '../http/request-context';

/**
 * The one place errors become answers: RFC 9457 problem+json. A 5xx never shows its cause to the caller;
 * the request's log line (pino-http, from the request's context) keeps it.
 */
export const errorHandler: ErrorRequestHandler = (error: unknown, req, res, _next) => {
  const appError = toAppError(error);
  contextOf(res).error = appError;
  // Already answered (an upload cut off at the limit) or nobody left to answer: the log line says the rest.
  if (res.headersSent || res.destroyed) return;
  // Answered before the body was read: the rest of an upload is not worth waiting for.
  if (!req.complete) closeAfterResponse(req, res);
  if (appError.retryAfterSeconds !== undefined) res.setHeader('Retry-After', String(appError.retryAfterSeconds));
  if (appError.status === 401) res.setHeader('WWW-Authenticate', 'Bearer');
  res
    .status(appError.status)
    .type('application/problem+json')
    .json({
      type: 'about:blank',
      title: STATUS_CODES[appError.status] ?? 'Error',
      status: appError.status,
      code: appError.code,
      ...(appError.param === undefined ? {} : { param: appError.param }),
      detail: appError.message,
      request_id: contextOf(res).requestId,
    });
};

export const notFound: RequestHandler = (req, _res, next) => {
  next(new AppError(404, 'NOT_FOUND', `no route for ${req.method} ${req.path}`.slice(0, 200)));
};

function toAppError(error: unknown): AppError {
  if (error instanceof AppError) return error;
  // Express's router and static files fail with a 4xx status (a malformed path, say): the caller's mistake.
  const status = (error as { status?: unknown } | undefined)?.status;
  if (typeof status === 'number' && status >= 400 && status < 500) {
    return new AppError(400, 'BAD_ARGUMENTS', 'the request could not be read', { cause: error });
  }
  return new AppError(500, 'INTERNAL_ERROR', 'an internal error occurred; it has been logged', { cause: error });
}

/** How long a refused request's connection is drained after the answer, so the client can read it. */
const LINGER_MS = 2_000;

/**
 * For an answer sent before the request's body was read (a 401, 429, 413 or 503 to an upload): the
 * connection closes after the answer rather than reading up to 20 MB it will not use. It closes without
 * cutting off a client still sending: the socket is half-closed and what still arrives is read and dropped
 * for a moment, as nginx's lingering close does. Closing at once would make the kernel answer those bytes
 * with a reset, and many clients then report the reset instead of the answer already in their buffer.
 */
function closeAfterResponse(req: Request, res: Response): void {
  res.setHeader('Connection', 'close');
  const socket = req.socket;
  socket.destroySoon = () => {
    socket.end();
    req.resume();
    socket.resume();
    setTimeout(() => socket.destroy(), LINGER_MS).unref();
  };
}
