import { createSecretKey, type KeyObject } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import axios, { type AxiosInstance, isAxiosError } from 'axios';
import FormData from 'form-data';
import type { Logger } from 'pino';
import type { FaceIdCredentials } from '../config/load-config';
import { AppError } from '../errors/app-error';
import type { ImageFormat } from '../images/inspect-image';
import type { AttackResult, VerifyResult } from '../verification/verdict';
import {
  type FaceIdFailure,
  isKnownCode,
  isRetryable,
  parseFaceIdError,
  toAppError,
  upstreamError,
} from './faceid-errors';
import type { FileParameterName, ParameterName } from './parameters';
import { freshSign, SIGN_VERSION } from './sign';
import { readVerifyAnswer } from './verify-answer';

export const GET_BIZ_TOKEN_PATH = '/faceid/v3/sdk/get_biz_token';
/** @see ../shared/seed/App-Verify.md (Call) */
export const VERIFY_PATH = '/faceid/v3/sdk/verify';

export interface UpstreamTokenRequest {
  /** Fields as the client sent them (validated). */
  clientFields: ReadonlyArray<readonly [ParameterName, string]>;
  /** Fields the service sets (uuid, security_level, force_compare); `sign` and `sign_version` are added here. */
  serviceFields: ReadonlyArray<readonly [ParameterName, string]>;
  images: ReadonlyArray<{ name: FileParameterName; bytes: Buffer; format: ImageFormat }>;
}

/** What every exchange reports for the log line and the metrics. */
export interface ExchangeFacts {
  faceidRequestId: string | undefined;
  /** FaceID's result code of the last attempt, from a bounded set (for the metric). */
  faceidResult: string;
  attempts: number;
  upstreamMs: number;
}

export interface UpstreamToken extends ExchangeFacts {
  bizToken: string;
}

export interface UpstreamVerifyRequest {
  bizToken: string;
  /** The SDK's package, byte for byte; absent only for raw_image tokens. */
  megliveData: Buffer | undefined;
}

/** FaceID's verify answer, as far as the service reads it. @see ../shared/seed/App-Verify.md (Answer) */
export interface VerifyAnswer {
  requestId: string | undefined;
  bizNo: string;
  resultCode: number;
  resultMessage: string;
  verification: VerifyResult['verification'];
  attackResult: AttackResult | undefined;
  imageBest: string | undefined;
}

export interface UpstreamVerification extends ExchangeFacts {
  answer: VerifyAnswer;
}

export interface FaceIdClientOptions {
  /** Without a trailing slash (the config trims it). */
  baseUrl: string;
  credentials: FaceIdCredentials;
  timeoutMs: number;
  maxRetries: number;
  /** Connections to FaceID at most, open or idle: the upstream gate keeps calls in flight within it. */
  maxSockets: number;
}

/** Connection failures where nothing reached FaceID: safe to retry whatever the call. */
const NOTHING_SENT_CODES = ['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN'];
/** A token request may also be retried after FaceID dropped the connection: a lost token costs nothing. */
const TOKEN_RETRYABLE_NETWORK_CODES: ReadonlySet<string> = new Set([...NOTHING_SENT_CODES, 'ECONNRESET', 'EPIPE']);
/** A verification may not: FaceID may have spent the biz_token before the connection went. */
const VERIFY_RETRYABLE_NETWORK_CODES: ReadonlySet<string> = new Set(NOTHING_SENT_CODES);
const BACKOFF_BASE_MS = 100;
const BACKOFF_CAP_MS = 1_000;
/** A biz_token response is a few hundred bytes; a huge body is a broken upstream, not a token. */
const MAX_TOKEN_RESPONSE_BYTES = 64 * 1024;
/** A verify answer carries the best frame in base64: a few hundred KB, bounded well above that. */
const MAX_VERIFY_RESPONSE_BYTES = 8 * 1024 * 1024;
/**
 * Idle connections are not reused after this long: less than servers commonly keep theirs (Node 5 s, nginx
 * 75 s), so a request is never sent on a connection the server is closing.
 */
const IDLE_CONNECTION_MS = 4_000;
/** The fields every call carries that the service alone sets. */
const SIGN_FIELDS: ReadonlySet<string> = new Set(['sign', 'sign_version']);
const CONTENT_TYPES: Record<ImageFormat, string> = { jpeg: 'image/jpeg', png: 'image/png', bmp: 'image/bmp' };

type AttemptOutcome<T> =
  | { kind: 'success'; value: T; requestId: string | undefined }
  | { kind: 'failure'; failure: FaceIdFailure; requestId: string | undefined }
  | { kind: 'too-large' }
  | { kind: 'unreadable'; httpStatus: number }
  | { kind: 'network'; code: string };

type Failure = Exclude<AttemptOutcome<unknown>, { kind: 'success' }>;

/** One kind of call: where it goes, what it sends, how a success reads, which lost connections are retried. */
interface ExchangeSpec<T> {
  path: string;
  /** Appends the call's own fields; `sign` and `sign_version` come first, fresh for each attempt. */
  fill: (form: FormData) => void;
  /** The value of a 200 answer, or undefined when it is not one. */
  read: (body: Record<string, unknown>) => T | undefined;
  retryableNetworkCodes: ReadonlySet<string>;
  maxResponseBytes: number;
  /** Fields the service set: FaceID complaining about one is the service's fault, not the caller's. */
  serviceFields: ReadonlySet<string>;
}

/**
 * Talks to FaceID's App-GetBizToken and App-Verify with axios and a form-data body: signs each attempt
 * afresh, bounds the whole exchange (retries included) by one deadline, retries what is safe to retry, and
 * maps every response to the service's errors through FACEID_ERROR_TABLE. Redirects are never followed: a
 * POST to FaceID never needs one.
 */
export class FaceIdClient {
  private readonly http: AxiosInstance;
  private readonly agents: { http: http.Agent; https: https.Agent };
  /** The api_secret as an HMAC key, made once rather than from the text on every sign. */
  private readonly secretKey: KeyObject;

  constructor(private readonly options: FaceIdClientOptions) {
    // Most recently used connection first, so idle ones age out instead of all being kept barely warm.
    const agentOptions = {
      keepAlive: true,
      maxSockets: options.maxSockets,
      maxFreeSockets: options.maxSockets,
      scheduling: 'lifo',
      timeout: IDLE_CONNECTION_MS,
    } as const;
    this.agents = { http: new http.Agent(agentOptions), https: new https.Agent(agentOptions) };
    this.http = axios.create({
      baseURL: options.baseUrl,
      httpAgent: this.agents.http,
      httpsAgent: this.agents.https,
      maxRedirects: 0,
      // No maxBodyLength: with it, axios since 1.15.1 never ends a form-data request, so every call opens a
      // connection and leaks the last. The upload limit already keeps the body within FaceID's.
      headers: { Accept: 'application/json' },
      // The body is read as text and judged here: FaceID's 413 is plain text, and a 5xx may be HTML.
      responseType: 'text',
      transformResponse: (data: unknown) => data,
      validateStatus: () => true,
    });
    this.secretKey = createSecretKey(Buffer.from(options.credentials.apiSecret, 'utf8'));
  }

  async getBizToken(request: UpstreamTokenRequest, log: Logger): Promise<UpstreamToken> {
    const { value, ...facts } = await this.exchange<string>(
      {
        path: GET_BIZ_TOKEN_PATH,
        fill: (form) => {
          for (const [name, value] of [...request.serviceFields, ...request.clientFields]) form.append(name, value);
          for (const image of request.images) {
            form.append(image.name, image.bytes, {
              filename: `${image.name}.${image.format}`,
              contentType: CONTENT_TYPES[image.format],
              knownLength: image.bytes.length,
            });
          }
        },
        read: (body) => (typeof body.biz_token === 'string' && body.biz_token.length > 0 ? body.biz_token : undefined),
        retryableNetworkCodes: TOKEN_RETRYABLE_NETWORK_CODES,
        maxResponseBytes: MAX_TOKEN_RESPONSE_BYTES,
        serviceFields: new Set([...SIGN_FIELDS, ...request.serviceFields.map(([name]) => name)]),
      },
      log,
    );
    return { bizToken: value, ...facts };
  }

  /** Sends the SDK's package unchanged. @see ../shared/seed/App-Verify.md */
  async verify(request: UpstreamVerifyRequest, log: Logger): Promise<UpstreamVerification> {
    const { value, ...facts } = await this.exchange<VerifyAnswer>(
      {
        path: VERIFY_PATH,
        fill: (form) => {
          form.append('biz_token', request.bizToken);
          if (request.megliveData !== undefined) {
            form.append('meglive_data', request.megliveData, {
              filename: 'meglive_data',
              contentType: 'application/octet-stream',
              knownLength: request.megliveData.length,
            });
          }
        },
        read: readVerifyAnswer,
        retryableNetworkCodes: VERIFY_RETRYABLE_NETWORK_CODES,
        maxResponseBytes: MAX_VERIFY_RESPONSE_BYTES,
        serviceFields: SIGN_FIELDS,
      },
      log,
    );
    return { answer: value, ...facts };
  }

  private async exchange<T>(spec: ExchangeSpec<T>, log: Logger): Promise<ExchangeFacts & { value: T }> {
    const started = performance.now();
    const deadline = AbortSignal.timeout(this.options.timeoutMs);
    let attempts = 0;
    for (;;) {
      if (deadline.aborted) throw timedOut({ attempts, upstreamMs: Math.round(performance.now() - started) });
      attempts += 1;
      const outcome = await this.attempt(spec, deadline);
      const context = { attempts, upstreamMs: Math.round(performance.now() - started) };
      if (deadline.aborted) throw timedOut(context);
      if (outcome.kind === 'success') {
        return { value: outcome.value, faceidRequestId: outcome.requestId, faceidResult: 'OK', ...context };
      }
      const retryable =
        (outcome.kind === 'network' && spec.retryableNetworkCodes.has(outcome.code)) ||
        (outcome.kind === 'failure' && isRetryable(outcome.failure));
      const backoffMs = Math.random() * Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** (attempts - 1));
      const remainingMs = this.options.timeoutMs - (performance.now() - started);
      // No new sign, body or connection for an attempt the deadline would cut off.
      if (retryable && attempts <= this.options.maxRetries && backoffMs < remainingMs) {
        log.debug(
          { attempt: attempts, outcome: describe(outcome), backoffMs: Math.round(backoffMs) },
          'retrying FaceID',
        );
        await new Promise((resolve) => setTimeout(resolve, backoffMs));
        continue;
      }
      throw this.toError(outcome, spec.serviceFields, {
        ...context,
        faceidRequestId: 'requestId' in outcome ? outcome.requestId : undefined,
        faceidResult: resultOf(outcome),
      });
    }
  }

  /** Closes the kept-alive connections. */
  close(): void {
    this.agents.http.destroy();
    this.agents.https.destroy();
  }

  /** One POST; every way it can end becomes an outcome, never a rejection. */
  private async attempt<T>(spec: ExchangeSpec<T>, deadline: AbortSignal): Promise<AttemptOutcome<T>> {
    const form = new FormData();
    form.append('sign', freshSign(this.options.credentials.apiKey, this.secretKey));
    form.append('sign_version', SIGN_VERSION);
    spec.fill(form);
    try {
      const response = await this.http.post<string>(spec.path, form, {
        // The length up front: axios would otherwise ask form-data for it asynchronously on every call.
        headers: form.getHeaders({ 'Content-Length': form.getLengthSync() }),
        maxContentLength: spec.maxResponseBytes,
        signal: deadline,
      });
      return readResponse(response.status, response.data, spec.read);
    } catch (error) {
      return failedOutcome(error);
    }
  }

  private toError(outcome: Failure, serviceFields: ReadonlySet<string>, context: Record<string, unknown>): AppError {
    switch (outcome.kind) {
      case 'failure':
        return toAppError(outcome.failure, serviceFields, context);
      case 'too-large':
        return new AppError(413, 'PAYLOAD_TOO_LARGE', 'FaceID refused the request as too large', {
          logContext: context,
        });
      case 'unreadable':
        return upstreamError('unreadable FaceID response', { ...context, faceidStatus: outcome.httpStatus });
      case 'network':
        return upstreamError('FaceID could not be reached', { ...context, networkError: outcome.code });
    }
  }
}

function readResponse<T>(
  httpStatus: number,
  text: string,
  read: (body: Record<string, unknown>) => T | undefined,
): AttemptOutcome<T> {
  // The 413 is plain text, not JSON. @see ../shared/seed/App-GetBizToken.md (413 Request Entity Too Large)
  if (httpStatus === 413) return { kind: 'too-large' };
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return { kind: 'unreadable', httpStatus };
  }
  if (typeof json !== 'object' || json === null) return { kind: 'unreadable', httpStatus };
  const body = json as Record<string, unknown>;
  const requestId = typeof body.request_id === 'string' ? body.request_id : undefined;
  const value = httpStatus === 200 ? read(body) : undefined;
  if (value !== undefined) return { kind: 'success', value, requestId };
  if (typeof body.error === 'string' && body.error.length > 0) {
    return { kind: 'failure', failure: parseFaceIdError(httpStatus, body.error), requestId };
  }
  return { kind: 'unreadable', httpStatus };
}

/**
 * A request that got no usable response. A response axios refused (over 64 KiB, or not valid HTTP) came
 * from FaceID and is unreadable; anything else is the connection's failure, named by its code.
 */
function failedOutcome(error: unknown): Failure {
  const code = isAxiosError(error) ? error.code : (error as { code?: unknown } | undefined)?.code;
  const status = isAxiosError(error) ? (error.response?.status ?? 0) : 0;
  if (typeof code === 'string' && (code === 'ERR_BAD_RESPONSE' || code.startsWith('HPE_')))
    return { kind: 'unreadable', httpStatus: status };
  return { kind: 'network', code: typeof code === 'string' ? code : 'UNKNOWN' };
}

/** Bounded: FaceID's documented codes, or what kind of non-response it was. */
function resultOf(outcome: Failure): string {
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

function describe(outcome: Failure): string {
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
  new AppError(504, 'UPSTREAM_TIMEOUT', 'FaceID did not answer in time', {
    logContext: { ...context, faceidResult: 'TIMEOUT' },
  });
