import { AppError, type ErrorCode } from '../errors/app-error';

/**
 * What each FaceID answer means for the caller: the one table of the mapping in CONTRACT section 2.
 * Keys are `CODE` or `CODE: REASON`; the more specific key wins.
 * @see ../shared/seed/App-GetBizToken.md (ERROR信息)
 * @see ../shared/seed/App-Authentication.md (Error strings in practice)
 */
type Mapping =
  /** The client's own field was at fault: same code, same field. */
  | { kind: 'client-field'; status: 400; code: ErrorCode; defaultParam?: string }
  | { kind: 'caller'; status: number; code: ErrorCode; detail: string; param?: string }
  /** Worth another attempt; `exhausted` is the answer once the retries are spent. */
  | { kind: 'retry'; exhausted: 'busy' | 'error' }
  /** FaceID refuses the service itself: an operator problem, so the caller gets no detail. */
  | { kind: 'rejected' };

const FACEID_ERROR_TABLE: Readonly<Record<string, Mapping>> = {
  MISSING_ARGUMENTS: { kind: 'client-field', status: 400, code: 'MISSING_ARGUMENTS' },
  BAD_ARGUMENTS: { kind: 'client-field', status: 400, code: 'BAD_ARGUMENTS' },
  IMAGE_ERROR_UNSUPPORTED_FORMAT: { kind: 'client-field', status: 400, code: 'IMAGE_ERROR_UNSUPPORTED_FORMAT' },
  INVALID_IMAGE_SIZE: { kind: 'client-field', status: 400, code: 'INVALID_IMAGE_SIZE' },
  NO_FACE_FOUND: { kind: 'client-field', status: 400, code: 'NO_FACE_FOUND' },
  MULTIPLE_FACES: { kind: 'client-field', status: 400, code: 'MULTIPLE_FACES', defaultParam: 'image' },
  LOW_QUALITY: { kind: 'client-field', status: 400, code: 'LOW_QUALITY', defaultParam: 'image' },
  /** @see ../shared/seed/App-Verify.md (Errors) */
  MEGLIVE_DATA_ERROR: { kind: 'client-field', status: 400, code: 'MEGLIVE_DATA_ERROR', defaultParam: 'meglive_data' },
  MEGLIVE_DATA_BIZ_TOKEN_NOT_MATCH: {
    kind: 'client-field',
    status: 400,
    code: 'MEGLIVE_DATA_BIZ_TOKEN_NOT_MATCH',
    defaultParam: 'meglive_data',
  },
  'AUTHORIZATION_ERROR: NO_DATA_SOURCE_PERMISSION': {
    kind: 'caller',
    status: 403,
    code: 'COMPARISON_TYPE_NOT_PERMITTED',
    param: 'comparison_type',
    detail: 'the FaceID account may not compare with the authoritative data source (comparison_type 1)',
  },
  'AUTHORIZATION_ERROR: NO_VERIFY_PERMISSION': {
    kind: 'caller',
    status: 403,
    code: 'COMPARISON_TYPE_NOT_PERMITTED',
    param: 'comparison_type',
    detail: 'the FaceID account may not compare with a reference photo (comparison_type 0)',
  },
  'AUTHORIZATION_ERROR: MORE_RETRY_TIMES': {
    kind: 'caller',
    status: 429,
    code: 'RETRY_LIMIT_REACHED',
    detail: "FaceID's retry limit for this user is reached",
  },
  AUTHORIZATION_ERROR: { kind: 'rejected' },
  AUTHENTICATION_ERROR: { kind: 'rejected' },
  API_NOT_FOUND: { kind: 'rejected' },
  CONCURRENCY_LIMIT_EXCEEDED: { kind: 'retry', exhausted: 'busy' },
  INTERNAL_ERROR: { kind: 'retry', exhausted: 'error' },
};

export interface FaceIdFailure {
  httpStatus: number;
  /** The whole error string as FaceID sent it (safe to log: FaceID names fields, never values). */
  error: string;
  code: string;
  detail: string;
}

/**
 * `CODE`, `CODE:param`, `CODE: reason`, and the seed's `INVALID_IMAGE_SIZE<param>` with no separator.
 * @see ../shared/seed/App-Authentication.md (split at the first colon and trim)
 */
export function parseFaceIdError(httpStatus: number, error: string): FaceIdFailure {
  const match = /^([A-Z][A-Z_]*[A-Z])\s*:?\s*(.*)$/s.exec(error.trim());
  return { httpStatus, error, code: match?.[1] ?? error.trim(), detail: (match?.[2] ?? '').trim() };
}

function mappingOf(failure: FaceIdFailure): Mapping | undefined {
  return FACEID_ERROR_TABLE[`${failure.code}: ${failure.detail}`] ?? FACEID_ERROR_TABLE[failure.code];
}

export const isKnownCode = (code: string): boolean => Object.hasOwn(FACEID_ERROR_TABLE, code);

export const isRetryable = (failure: FaceIdFailure): boolean => mappingOf(failure)?.kind === 'retry';

const BUSY_RETRY_AFTER_SECONDS = 1;

export const upstreamError = (detail: string, logContext: Record<string, unknown>): AppError =>
  new AppError(502, 'UPSTREAM_ERROR', 'FaceID failed to answer; try again later', {
    logContext: { ...logContext, reason: detail },
  });

const upstreamRejected = (logContext: Record<string, unknown>): AppError =>
  new AppError(
    502,
    'UPSTREAM_REJECTED',
    "FaceID refused the service's credentials or configuration; the operator has been told",
    {
      logContext,
    },
  );

/**
 * The caller's answer for a FaceID failure that will not be retried (any more).
 * @param serviceFields fields the service set itself: FaceID complaining about one is the service's fault.
 */
export function toAppError(
  failure: FaceIdFailure,
  serviceFields: ReadonlySet<string>,
  logContext: Record<string, unknown>,
): AppError {
  const context = { ...logContext, faceidStatus: failure.httpStatus, faceidError: failure.error };
  const mapping = mappingOf(failure);
  switch (mapping?.kind) {
    case 'client-field': {
      // Only a field-like name is echoed to the caller; anything else FaceID adds stays in the log.
      const param = /^[a-z][a-z0-9_]{0,39}$/.test(failure.detail) ? failure.detail : mapping.defaultParam;
      if (param !== undefined && serviceFields.has(param)) return upstreamRejected(context);
      const detail = param === undefined ? `FaceID: ${mapping.code}` : `FaceID: ${mapping.code} (${param})`;
      return new AppError(400, mapping.code, detail, { param, logContext: context });
    }
    case 'caller':
      return new AppError(mapping.status, mapping.code, mapping.detail, { param: mapping.param, logContext: context });
    case 'retry':
      return mapping.exhausted === 'busy'
        ? new AppError(503, 'UPSTREAM_BUSY', 'FaceID is busy; try again shortly', {
            retryAfterSeconds: BUSY_RETRY_AFTER_SECONDS,
            logContext: context,
          })
        : upstreamError('FaceID INTERNAL_ERROR after retries', context);
    case 'rejected':
      return upstreamRejected(context);
    default:
      return upstreamError('unknown FaceID error', context);
  }
}
