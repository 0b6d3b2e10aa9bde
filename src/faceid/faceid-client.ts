import { createSecretKey, type KeyObject } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import { urlToHttpOptions } from 'node:url';
import type { Logger } from 'pino';
import type { FaceIdCredentials } from '../config/load-config';
import { AppError } from '../errors/app-error';
import type { ImageFormat } from '../images/inspect-image';
import { encodeMultipart } from './multipart-encoder';
import type { FileParameterName, ParameterName } from './parameters';
import { freshSign, SIGN_VERSION } from './sign';
import { isKnownCode, isRetryable, parseFaceIdError, toAppError, upstreamError, type FaceIdFailure } from './faceid-errors';

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
  /** Most sockets per host; the concurrency limiter keeps calls below it. */
  maxSockets: number;
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
 * cost about 5 µs per request, and a `signal` on the request hangs listeners on every socket it is given.
 */
class Deadline {
  expired = false;
  private readonly timer: NodeJS.Timeout;
  private current: http.ClientRequest | undefined;

  constructor(ms: number) {
    this.timer = setTimeout(() => {
      this.expired = true;
      this.current?.destroy();
    }, ms);
  }

  /** The attempt the deadline cuts short when it passes. */
  watch(request: http.ClientRequest | undefined): void {
    this.current = request;
    if (this.expired) request?.destroy();
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
  private readonly target: http.RequestOptions;
  /** The api_secret as an HMAC key, made once rather than from the text on every sign. */
  private readonly secretKey: KeyObject;
  private readonly agent: http.Agent;
  private readonly transport: typeof http | typeof https;

  /**
   * node:http, not axios and form-data: per 150 KB request those two cost about 0.8 CPU-ms more here, more
   * than the service's whole budget (see BENCHMARKS.md). Redirects are never followed: a POST to FaceID
   * never needs one.
   */
  constructor(private readonly options: FaceIdClientOptions) {
    const url = new URL(`${options.baseUrl}${GET_BIZ_TOKEN_PATH}`);
    const secure = url.protocol === 'https:';
    this.transport = secure ? https : http;
    this.agent = secure ? new https.Agent({ keepAlive: true, maxSockets: options.maxSockets }) : new http.Agent({ keepAlive: true, maxSockets: options.maxSockets });
    // Resolved once: handing the URL to every request would convert it to these options each time.
    this.target = { ...urlToHttpOptions(url), method: 'POST', agent: this.agent };
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
    this.agent.destroy();
  }

  private async exchange(request: UpstreamTokenRequest, deadline: Deadline, log: Logger): Promise<UpstreamToken> {
    const started = performance.now();
    let attempts = 0;
    for (;;) {
      attempts += 1;
      const outcome = await this.attempt(request, deadline);
      const context = { attempts, upstreamMs: Math.round(performance.now() - started) };
      if (deadline.expired) {
        throw new AppError(504, 'UPSTREAM_TIMEOUT', 'FaceID did not answer in time', { logContext: { ...context, faceidResult: 'TIMEOUT' } });
      }
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

  /**
   * One POST; every way it can end becomes an outcome, never a rejection. The outcome is given only once
   * the request is closed: FaceID may answer before it has read the whole body, and the photos' buffers
   * must not be reused while they are still being written.
   */
  private attempt(request: UpstreamTokenRequest, deadline: Deadline): Promise<AttemptOutcome> {
    const form = encodeMultipart(
      [['sign', freshSign(this.options.credentials.apiKey, this.secretKey)], ['sign_version', SIGN_VERSION], ...request.serviceFields, ...request.clientFields],
      request.images.map((image) => ({
        name: image.name,
        filename: `${image.name}.${image.format}`,
        contentType: CONTENT_TYPES[image.format],
        bytes: image.bytes,
      })),
    );
    return new Promise((done) => {
      let outcome: AttemptOutcome | undefined;
      const resolve = (value: AttemptOutcome): void => {
        outcome ??= value;
      };
      const failed = (error: NodeJS.ErrnoException): void => {
        const code = error.code ?? 'UNKNOWN';
        resolve({ kind: 'network', code, retryable: RETRYABLE_NETWORK_CODES.has(code) });
      };
      const outgoing = this.transport.request(
        { ...this.target, headers: { 'Content-Type': form.contentType, 'Content-Length': String(form.length), Accept: 'application/json' } },
        (response) => {
          const chunks: Buffer[] = [];
          let size = 0;
          response.on('data', (chunk: Buffer) => {
            size += chunk.length;
            if (size <= MAX_ANSWER_BYTES) chunks.push(chunk);
            else {
              // Not a token: the connection is dropped rather than read to its end.
              outgoing.destroy();
              resolve({ kind: 'unreadable', httpStatus: response.statusCode ?? 0 });
            }
          });
          response.on('end', () => resolve(readAnswer(response.statusCode ?? 0, Buffer.concat(chunks).toString('utf8'))));
          response.on('error', failed);
        },
      );
      outgoing.on('error', failed);
      outgoing.on('close', () => {
        deadline.watch(undefined);
        done(outcome ?? { kind: 'network', code: 'UNKNOWN', retryable: false });
      });
      deadline.watch(outgoing);
      // One write of the small parts and the photos together, then the end.
      outgoing.cork();
      for (const chunk of form.chunks) outgoing.write(chunk);
      outgoing.end();
    });
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

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
