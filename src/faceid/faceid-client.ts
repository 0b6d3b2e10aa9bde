import { createSecretKey, type KeyObject } from 'node:crypto';
import type { Logger } from 'pino';
import type { FaceIdCredentials } from '../config/load-config';
import { AppError } from '../errors/app-error';
import type { ImageFormat } from '../images/inspect-image';
import { encodeMultipart } from './multipart-encoder';
import type { FileParameterName, ParameterName } from './parameters';
import { freshSign, SIGN_VERSION } from './sign';
import { isKnownCode, isRetryable, parseFaceIdError, toAppError, upstreamError, type FaceIdFailure } from './faceid-errors';
import { UpstreamConnections, type Interrupter, type PostOutcome } from './upstream-connections';

export const GET_BIZ_TOKEN_PATH = '/faceid/v3/sdk/get_biz_token';

export interface UpstreamTokenRequest {
  /** Fields as the client sent them (validated). */
  clientFields: ReadonlyArray<readonly [ParameterName, string]>;
  /** Fields the service sets (uuid, security_level, force_compare); `sign` and `sign_version` are added here. */
  serviceFields: ReadonlyArray<readonly [ParameterName, string]>;
  images: ReadonlyArray<{ name: FileParameterName; bytes: Buffer; format: ImageFormat }>;
}

export interface UpstreamToken {
  bizToken: string;
  faceidRequestId: string | undefined;
  /** FaceID's result code of the last attempt, from a bounded set (for the metric). */
  faceidResult: string;
  attempts: number;
  upstreamMs: number;
}

export interface FaceIdClientOptions {
  /** Without a trailing slash (the config trims it). */
  baseUrl: string;
  credentials: FaceIdCredentials;
  timeoutMs: number;
  maxRetries: number;
  /** Most connections kept open between calls; the upstream gate keeps calls in flight below it. */
  maxIdleConnections: number;
}

const RETRYABLE_NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN']);
const BACKOFF_BASE_MS = 100;
const BACKOFF_CAP_MS = 1_000;
/** A biz_token answer is a few hundred bytes; a huge body is a broken upstream, not a token. */
const MAX_ANSWER_BYTES = 64 * 1024;
const CONTENT_TYPES: Record<ImageFormat, string> = { jpeg: 'image/jpeg', png: 'image/png', bmp: 'image/bmp' };

type AttemptOutcome =
  | { kind: 'token'; bizToken: string; requestId: string | undefined }
  | { kind: 'failure'; failure: FaceIdFailure; requestId: string | undefined }
  | { kind: 'too-large' }
  | { kind: 'unreadable'; httpStatus: number }
  | { kind: 'network'; code: string; retryable: boolean };

/**
 * The whole exchange's deadline, retries included. A plain timer rather than `AbortSignal.timeout`: that one
 * cost about 5 µs per request.
 */
class Deadline implements Interrupter {
  expired = false;
  private readonly timer: NodeJS.Timeout;
  private current: { destroy(): void } | undefined;

  constructor(ms: number) {
    this.timer = setTimeout(() => {
      this.expired = true;
      this.current?.destroy();
    }, ms);
  }

  /** The attempt's socket, which the deadline destroys when it passes. */
  watch(target: { destroy(): void } | undefined): void {
    this.current = target;
    if (this.expired) target?.destroy();
  }

  clear(): void {
    clearTimeout(this.timer);
  }
}

/**
 * Talks to FaceID's App-GetBizToken: signs each attempt afresh, bounds the whole exchange (retries
 * included) by one deadline, retries what the seed calls safe to retry, and maps every answer to the
 * service's errors through FACEID_ERROR_TABLE.
 */
export class FaceIdClient {
  private readonly connections: UpstreamConnections;
  /** Request line and the headers every attempt shares. */
  private readonly headStart: string;
  /** The api_secret as an HMAC key, made once rather than from the text on every sign. */
  private readonly secretKey: KeyObject;

  /**
   * Its own HTTP/1.1 connections (upstream-connections.ts), not axios and form-data nor node:http's client:
   * per 150 KB request axios and form-data cost about 0.8 CPU-ms more here, node:http's client about a
   * tenth of the whole (see BENCHMARKS.md). Redirects are never followed: a POST to FaceID never needs one.
   */
  constructor(private readonly options: FaceIdClientOptions) {
    const url = new URL(`${options.baseUrl}${GET_BIZ_TOKEN_PATH}`);
    this.connections = new UpstreamConnections(url, { maxIdle: options.maxIdleConnections, maxAnswerBytes: MAX_ANSWER_BYTES });
    this.headStart = `POST ${url.pathname}${url.search} HTTP/1.1\r\nHost: ${url.host}\r\nAccept: application/json\r\n`;
    this.secretKey = createSecretKey(Buffer.from(options.credentials.apiSecret, 'utf8'));
  }

  async getBizToken(request: UpstreamTokenRequest, log: Logger): Promise<UpstreamToken> {
    const deadline = new Deadline(this.options.timeoutMs);
    try {
      return await this.exchange(request, deadline, log);
    } finally {
      deadline.clear();
    }
  }

  close(): void {
    this.connections.close();
  }

  private async exchange(request: UpstreamTokenRequest, deadline: Deadline, log: Logger): Promise<UpstreamToken> {
    const started = performance.now();
    let attempts = 0;
    for (;;) {
      // The deadline may pass during a back-off: no new sign, body or connection for an attempt it would cut.
      if (deadline.expired) throw timedOut({ attempts, upstreamMs: Math.round(performance.now() - started) });
      attempts += 1;
      const outcome = await this.attempt(request, deadline);
      const context = { attempts, upstreamMs: Math.round(performance.now() - started) };
      if (deadline.expired) throw timedOut(context);
      if (outcome.kind === 'token') {
        return { bizToken: outcome.bizToken, faceidRequestId: outcome.requestId, faceidResult: 'OK', ...context };
      }
      const retryable = (outcome.kind === 'network' && outcome.retryable) || (outcome.kind === 'failure' && isRetryable(outcome.failure));
      const backoffMs = Math.random() * Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** (attempts - 1));
      const remainingMs = this.options.timeoutMs - (performance.now() - started);
      if (retryable && attempts <= this.options.maxRetries && backoffMs < remainingMs) {
        log.debug({ attempt: attempts, outcome: describe(outcome), backoffMs: Math.round(backoffMs) }, 'retrying FaceID');
        await sleep(backoffMs);
        continue;
      }
      throw this.toError(outcome, new Set(['sign', 'sign_version', ...request.serviceFields.map(([name]) => name)]), {
        ...context,
        faceidRequestId: 'requestId' in outcome ? outcome.requestId : undefined,
        faceidResult: resultOf(outcome),
      });
    }
  }

  /** One POST; every way it can end becomes an outcome, never a rejection. */
  private async attempt(request: UpstreamTokenRequest, deadline: Deadline): Promise<AttemptOutcome> {
    const form = encodeMultipart(
      [['sign', freshSign(this.options.credentials.apiKey, this.secretKey)], ['sign_version', SIGN_VERSION], ...request.serviceFields, ...request.clientFields],
      request.images.map((image) => ({
        name: image.name,
        filename: `${image.name}.${image.format}`,
        contentType: CONTENT_TYPES[image.format],
        bytes: image.bytes,
      })),
    );
    const head = `${this.headStart}Content-Type: ${form.contentType}\r\nContent-Length: ${form.length}\r\n\r\n`;
    const posted = await this.connections.post(head, form.chunks, deadline);
    deadline.watch(undefined);
    return toAttemptOutcome(posted);
  }

  private toError(outcome: Exclude<AttemptOutcome, { kind: 'token' }>, serviceFields: ReadonlySet<string>, context: Record<string, unknown>): AppError {
    switch (outcome.kind) {
      case 'failure':
        return toAppError(outcome.failure, serviceFields, context);
      case 'too-large':
        return new AppError(413, 'PAYLOAD_TOO_LARGE', 'FaceID refused the request as too large', { logContext: context });
      case 'unreadable':
        return upstreamError('unreadable FaceID answer', { ...context, faceidStatus: outcome.httpStatus });
      case 'network':
        return upstreamError('FaceID could not be reached', { ...context, networkError: outcome.code });
    }
  }
}

function toAttemptOutcome(posted: PostOutcome): AttemptOutcome {
  switch (posted.kind) {
    case 'answer':
      return readAnswer(posted.status, posted.body.toString('utf8'));
    case 'unreadable':
      return { kind: 'unreadable', httpStatus: posted.status };
    case 'network':
      return { kind: 'network', code: posted.code, retryable: RETRYABLE_NETWORK_CODES.has(posted.code) };
  }
}

function readAnswer(httpStatus: number, text: string): AttemptOutcome {
  // The 413 is plain text, not JSON. @see ../shared/seed/App-GetBizToken.md (413 Request Entity Too Large)
  if (httpStatus === 413) return { kind: 'too-large' };
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return { kind: 'unreadable', httpStatus };
  }
  if (typeof json !== 'object' || json === null) return { kind: 'unreadable', httpStatus };
  const answer = json as Record<string, unknown>;
  const requestId = typeof answer.request_id === 'string' ? answer.request_id : undefined;
  if (httpStatus === 200 && typeof answer.biz_token === 'string' && answer.biz_token.length > 0) {
    return { kind: 'token', bizToken: answer.biz_token, requestId };
  }
  if (typeof answer.error === 'string' && answer.error.length > 0) {
    return { kind: 'failure', failure: parseFaceIdError(httpStatus, answer.error), requestId };
  }
  return { kind: 'unreadable', httpStatus };
}

/** Bounded: FaceID's documented codes, or what kind of non-answer it was. */
function resultOf(outcome: Exclude<AttemptOutcome, { kind: 'token' }>): string {
  switch (outcome.kind) {
    case 'failure':
      return isKnownCode(outcome.failure.code) ? outcome.failure.code : 'OTHER';
    case 'too-large':
      return 'REQUEST_ENTITY_TOO_LARGE';
    case 'unreadable':
      return 'UNREADABLE';
    case 'network':
      return 'CONNECTION_FAILED';
  }
}

function describe(outcome: Exclude<AttemptOutcome, { kind: 'token' }>): string {
  switch (outcome.kind) {
    case 'failure':
      return outcome.failure.error;
    case 'network':
      return outcome.code;
    default:
      return outcome.kind;
  }
}

const timedOut = (context: { attempts: number; upstreamMs: number }): AppError =>
  new AppError(504, 'UPSTREAM_TIMEOUT', 'FaceID did not answer in time', { logContext: { ...context, faceidResult: 'TIMEOUT' } });

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
