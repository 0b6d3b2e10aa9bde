import type { ErrorCode } from './error-catalog';

export type { ErrorCode };

export interface AppErrorOptions {
  param?: string;
  /** Seconds, sent as `Retry-After`. */
  retryAfterSeconds?: number;
  /** Extra facts for the log line only; never sent to the caller. */
  logContext?: Record<string, unknown>;
  cause?: unknown;
}

/**
 * The one error type of the service. Everything that ends a request early throws an AppError; the error
 * handler turns it into an RFC 9457 problem answer. `detail` is shown to the caller, so it never holds
 * secrets, ID numbers, names or upstream internals (those go to `logContext`, which only the log sees).
 */
export class AppError extends Error {
  readonly status: number;
  readonly code: ErrorCode;
  readonly param: string | undefined;
  readonly retryAfterSeconds: number | undefined;
  readonly logContext: Record<string, unknown> | undefined;

  constructor(status: number, code: ErrorCode, detail: string, options: AppErrorOptions = {}) {
    super(detail, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'AppError';
    this.status = status;
    this.code = code;
    this.param = options.param;
    this.retryAfterSeconds = options.retryAfterSeconds;
    this.logContext = options.logContext;
  }
}

export const badArgument = (param: string, detail: string): AppError =>
  new AppError(400, 'BAD_ARGUMENTS', detail, { param });

export const missingArgument = (param: string): AppError =>
  new AppError(400, 'MISSING_ARGUMENTS', `${param} is required`, { param });
