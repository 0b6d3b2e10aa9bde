import axios, { type AxiosInstance, type AxiosResponse } from 'axios';
import FormData from 'form-data';
import http from 'node:http';
import https from 'node:https';
import type { Logger } from 'pino';
import type { FaceIdCredentials } from '../config/load-config';
import { AppError } from '../errors/app-error';
import type { ImageFormat } from '../images/inspect-image';
import { freshSign, SIGN_VERSION } from './sign';
import { isKnownCode, isRetryable, parseFaceIdError, toAppError, upstreamError, type FaceIdFailure } from './faceid-errors';

export const GET_BIZ_TOKEN_PATH = '/faceid/v3/sdk/get_biz_token';

export interface UpstreamTokenRequest {
  /** Fields as the client sent them (validated). */
  clientFields: ReadonlyArray<readonly [string, string]>;
  /** Fields the service sets (uuid, security_level, force_compare); `sign` and `sign_version` are added here. */
  serviceFields: ReadonlyArray<readonly [string, string]>;
  images: ReadonlyArray<{ name: string; bytes: Buffer; format: ImageFormat }>;
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
 * Talks to FaceID's App-GetBizToken: signs each attempt afresh, bounds the whole exchange (retries
 * included) by one deadline, retries what the seed calls safe to retry, and maps every answer to the
 * service's errors through FACEID_ERROR_TABLE.
 */
export class FaceIdClient {
  private readonly http: AxiosInstance;
  private readonly httpAgent: http.Agent;
  private readonly httpsAgent: https.Agent;

  constructor(private readonly options: FaceIdClientOptions) {
    this.httpAgent = new http.Agent({ keepAlive: true, maxSockets: options.maxSockets });
    this.httpsAgent = new https.Agent({ keepAlive: true, maxSockets: options.maxSockets });
    this.http = axios.create({
      baseURL: options.baseUrl,
      httpAgent: this.httpAgent,
      httpsAgent: this.httpsAgent,
      // No redirects: a POST to FaceID never needs one, and this keeps axios off follow-redirects, whose
      // body limits were seen to leave requests un-ended and connections un-reused.
      maxRedirects: 0,
      proxy: false,
      maxContentLength: MAX_ANSWER_BYTES,
      responseType: 'text',
      transformResponse: [(data: unknown) => data],
      validateStatus: () => true,
    });
  }

  async getBizToken(request: UpstreamTokenRequest, log: Logger): Promise<UpstreamToken> {
    const started = performance.now();
    const deadline = AbortSignal.timeout(this.options.timeoutMs);
    const serviceFields = new Set(['sign', 'sign_version', ...request.serviceFields.map(([name]) => name)]);
    let attempts = 0;
    for (;;) {
      attempts += 1;
      const outcome = await this.attempt(request, deadline);
      const context = { attempts, upstreamMs: Math.round(performance.now() - started) };
      if (deadline.aborted) {
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
      throw this.toError(outcome, serviceFields, {
        ...context,
        faceidRequestId: 'requestId' in outcome ? outcome.requestId : undefined,
        faceidResult: resultOf(outcome),
      });
    }
  }

  close(): void {
    this.httpAgent.destroy();
    this.httpsAgent.destroy();
  }

  private async attempt(request: UpstreamTokenRequest, deadline: AbortSignal): Promise<AttemptOutcome> {
    const { apiKey, apiSecret } = this.options.credentials;
    const form = new FormData();
    form.append('sign', freshSign(apiKey, apiSecret));
    form.append('sign_version', SIGN_VERSION);
    for (const [name, value] of [...request.serviceFields, ...request.clientFields]) form.append(name, value);
    for (const image of request.images) {
      form.append(image.name, image.bytes, { filename: `${image.name}.${image.format}`, contentType: CONTENT_TYPES[image.format] });
    }
    let response: AxiosResponse<string>;
    try {
      // Streamed, not joined into one buffer: the photos are not copied again. The exact Content-Length
      // lets the request end cleanly, so its socket goes back to the pool (no maxBodyLength is set, which
      // with a stream body was seen to leave requests un-ended).
      response = await this.http.post<string>(GET_BIZ_TOKEN_PATH, form, {
        headers: { ...form.getHeaders(), 'Content-Length': String(form.getLengthSync()) },
        signal: deadline,
      });
    } catch (error) {
      const code = (axios.isAxiosError(error) ? error.code : undefined) ?? 'UNKNOWN';
      return { kind: 'network', code, retryable: RETRYABLE_NETWORK_CODES.has(code) };
    }
    return readAnswer(response);
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

function readAnswer(response: AxiosResponse<string>): AttemptOutcome {
  const text = typeof response.data === 'string' ? response.data : '';
  // The 413 is plain text, not JSON. @see ../shared/seed/App-GetBizToken.md (413 Request Entity Too Large)
  if (response.status === 413) return { kind: 'too-large' };
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return { kind: 'unreadable', httpStatus: response.status };
  }
  if (typeof json !== 'object' || json === null) return { kind: 'unreadable', httpStatus: response.status };
  const answer = json as Record<string, unknown>;
  const requestId = typeof answer.request_id === 'string' ? answer.request_id : undefined;
  if (response.status === 200 && typeof answer.biz_token === 'string' && answer.biz_token.length > 0) {
    return { kind: 'token', bizToken: answer.biz_token, requestId };
  }
  if (typeof answer.error === 'string' && answer.error.length > 0) {
    return { kind: 'failure', failure: parseFaceIdError(response.status, answer.error), requestId };
  }
  return { kind: 'unreadable', httpStatus: response.status };
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
