import { MAX_REQUEST_BYTES } from '../faceid/parameters';
import { MAX_IMAGE_SIDE } from '../images/inspect-image';

/**
 * Every error code the service answers with: its status, when it happens, and an example. The OpenAPI
 * document is built from this list; a test checks the README's runbook has a row for each 5xx code.
 */
export interface ErrorEntry {
  status: number;
  when: string;
  example: { detail: string; param?: string };
}

export const ERROR_CATALOG = {
  MISSING_ARGUMENTS: {
    status: 400,
    when: 'A required field is missing.',
    example: { detail: 'image_ref1 is required', param: 'image_ref1' },
  },
  BAD_ARGUMENTS: {
    status: 400,
    when: 'A field is malformed, out of range, not allowed with the chosen types, unknown, repeated, or set by the service.',
    example: { detail: 'liveness_timeout must be a whole number from 5 to 60', param: 'liveness_timeout' },
  },
  IMAGE_ERROR_UNSUPPORTED_FORMAT: {
    status: 400,
    when: 'An image is not a complete JPEG, PNG or BMP (judged by its bytes).',
    example: { detail: 'image_ref1 is not a complete JPEG, PNG or BMP image', param: 'image_ref1' },
  },
  INVALID_IMAGE_SIZE: {
    status: 400,
    when: `An image is wider or taller than ${MAX_IMAGE_SIDE} pixels.`,
    example: { detail: `image_ref1 is wider or taller than ${MAX_IMAGE_SIDE} pixels`, param: 'image_ref1' },
  },
  NO_FACE_FOUND: {
    status: 400,
    when: 'FaceID found no face in an image.',
    example: { detail: 'FaceID: NO_FACE_FOUND (image_ref1)', param: 'image_ref1' },
  },
  MULTIPLE_FACES: {
    status: 400,
    when: 'FaceID found several faces in `image`.',
    example: { detail: 'FaceID: MULTIPLE_FACES (image)', param: 'image' },
  },
  LOW_QUALITY: {
    status: 400,
    when: 'The face in `image` is of too low a quality.',
    example: { detail: 'FaceID: LOW_QUALITY (image)', param: 'image' },
  },
  MEGLIVE_DATA_ERROR: {
    status: 400,
    when: 'FaceID could not read `meglive_data`: it must be sent exactly as the SDK produced it.',
    example: { detail: 'FaceID: MEGLIVE_DATA_ERROR (meglive_data)', param: 'meglive_data' },
  },
  MEGLIVE_DATA_BIZ_TOKEN_NOT_MATCH: {
    status: 400,
    when: '`meglive_data` was made for another biz_token.',
    example: { detail: 'FaceID: MEGLIVE_DATA_BIZ_TOKEN_NOT_MATCH (meglive_data)', param: 'meglive_data' },
  },
  UNAUTHENTICATED: { status: 401, when: 'No or an invalid caller JWT.', example: { detail: 'the token has expired' } },
  COMPARISON_TYPE_NOT_PERMITTED: {
    status: 403,
    when: 'The FaceID account may not use this comparison type.',
    example: {
      detail: 'the FaceID account may not compare with the authoritative data source (comparison_type 1)',
      param: 'comparison_type',
    },
  },
  NOT_FOUND: {
    status: 404,
    when: 'No such route, or no verification with this id that the caller may read.',
    example: { detail: 'no route for GET /v1/nothing' },
  },
  BIZ_TOKEN_NOT_FOUND: {
    status: 404,
    when: 'The biz_token was not issued by this service to this user, or its hour is over (the cases are not told apart).',
    example: { detail: 'no biz_token of yours with this value is live', param: 'biz_token' },
  },
  IDEMPOTENCY_KEY_REUSED: {
    status: 409,
    when: 'The Idempotency-Key was used with a different body, or its first request is still being answered after the wait.',
    example: { detail: 'this Idempotency-Key was used with a different request body', param: 'Idempotency-Key' },
  },
  PAYLOAD_TOO_LARGE: {
    status: 413,
    when: `The request is over ${MAX_REQUEST_BYTES / 1024 / 1024} MiB (the service's limit, or FaceID's own 413).`,
    example: { detail: `the request is larger than ${MAX_REQUEST_BYTES} bytes` },
  },
  UNSUPPORTED_MEDIA_TYPE: {
    status: 415,
    when: 'The body is not multipart/form-data.',
    example: { detail: 'the body must be multipart/form-data' },
  },
  RATE_LIMITED: {
    status: 429,
    when: "The user's rate limit is spent; see Retry-After.",
    example: { detail: 'at most 5 token requests per 60 s; try again later' },
  },
  RETRY_LIMIT_REACHED: {
    status: 429,
    when: "FaceID's per-user retry limit (MORE_RETRY_TIMES).",
    example: { detail: "FaceID's retry limit for this user is reached" },
  },
  INTERNAL_ERROR: {
    status: 500,
    when: 'A bug in the service.',
    example: { detail: 'an internal error occurred; it has been logged' },
  },
  UPSTREAM_REJECTED: {
    status: 502,
    when: "FaceID refused the service's own credentials or configuration.",
    example: { detail: "FaceID refused the service's credentials or configuration; the operator has been told" },
  },
  UPSTREAM_ERROR: {
    status: 502,
    when: 'FaceID failed (INTERNAL_ERROR after retries, an unreadable answer, or no connection).',
    example: { detail: 'FaceID failed to answer; try again later' },
  },
  UPSTREAM_BUSY: {
    status: 503,
    when: "FaceID is busy (CONCURRENCY_LIMIT_EXCEEDED after retries), the service's FaceID capacity or queue is full, FaceID's circuit is open after repeated failures, too many uploads are held in memory, or the daily budget is spent; see Retry-After.",
    example: { detail: 'FaceID is busy; try again shortly' },
  },
  UPSTREAM_TIMEOUT: {
    status: 504,
    when: 'FaceID did not answer within FACEID_TIMEOUT_MS.',
    example: { detail: 'FaceID did not answer in time' },
  },
} as const satisfies Record<string, ErrorEntry>;

export type ErrorCode = keyof typeof ERROR_CATALOG;
