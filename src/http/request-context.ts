import type { Request, Response } from 'express';
import type { Caller } from '../auth/authenticate-caller';
import type { AppError } from '../errors/app-error';
import type { CompletedRecord } from '../idempotency/idempotency-store';

/**
 * What one request has learnt so far, kept in `res.locals`: the middleware fill it in, the log line, the
 * metrics and the problem answer read it.
 */
export interface RequestContext {
  requestId: string;
  caller?: Caller;
  /** The caller's rate-limit window is spent: only a stored answer for its Idempotency-Key may still be given. */
  rateLimited?: AppError;
  idempotencyKey?: string;
  /** The stored answer a rate-limited caller's Idempotency-Key already holds. */
  completedBefore?: CompletedRecord;
  error?: AppError;
  /** The answer was a stored one, replayed (an Idempotency-Key, or a biz_token verified before). */
  replayed?: true;
  /** What FaceID's exchange reported, for a request answered with FaceID's help. */
  upstream?: Record<string, unknown>;
  /** Node's HTTP parser refused the request (a malformed chunk) and answered it with its own 400. */
  refusedByHttpParser?: true;
}

declare global {
  namespace Express {
    interface Locals {
      context?: RequestContext;
    }
  }
}

export function contextOf(res: Response): RequestContext {
  res.locals.context ??= { requestId: '' };
  return res.locals.context;
}

/** The authenticated caller; only middleware after `authenticate` may ask. */
export function callerOf(res: Response): Caller {
  const { caller } = contextOf(res);
  if (caller === undefined) throw new Error('the caller is asked for before authentication ran');
  return caller;
}

/** Status of an answer that never went out: nginx's "client closed request", so logs and metrics never claim a 200. */
export const CLIENT_CLOSED_STATUS = 499;

/** The route pattern for logs and metrics, so paths with ids or junk never become free-form values. */
export function routeOf(req: Request): string {
  const route = req.route as { path?: unknown } | undefined;
  return typeof route?.path === 'string' ? route.path : 'unmatched';
}

/**
 * How the request ended, for its log line and the metrics alike: the status really sent (499 when the
 * client left before the response was out, Node's own 400 for a body that is not valid HTTP), the service's
 * code, and the upstream facts when FaceID was asked.
 */
export function outcomeOf(res: Response): {
  status: number;
  code: string;
  upstream: Record<string, unknown> | undefined;
} {
  const { error, refusedByHttpParser } = contextOf(res);
  const upstream = contextOf(res).upstream ?? error?.logContext;
  if (res.writableFinished) return { status: res.statusCode, code: error?.code ?? 'OK', upstream };
  if (refusedByHttpParser) return { status: 400, code: 'BAD_ARGUMENTS', upstream };
  return { status: CLIENT_CLOSED_STATUS, code: 'CLIENT_CLOSED', upstream };
}
