import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Logger } from 'pino';
import { GET_BIZ_TOKEN_PATH, VERIFY_PATH } from '../faceid/faceid-client';
import {
  type ComparisonType,
  FILE_PARAMETERS,
  fitsTypes,
  isParameterName,
  isRequired,
  type LivenessType,
  PARAMETERS,
  type ParameterName,
  valueProblem,
} from '../faceid/parameters';
import { decodeSign, SIGN_VERSION } from '../faceid/sign';
import { inspectImage } from '../images/inspect-image';
import type { MultipartForm } from '../token-request/multipart-form';
import { IssuedTokens, type NewIssuedToken } from './issued-tokens';
import { encodeMeglivePackage, type MegliveContent, packageKey } from './meglive-package';
import {
  type Answer,
  announcedOver,
  faceIdError,
  type Judgement,
  parseForm,
  readBody,
  readJson,
  requestId,
  send,
  sendBytes,
  shapeProblem,
  tooLarge,
} from './sandbox-http';
import {
  judgeVerify,
  MEGLIVE_DATA_MAX_BYTES,
  MEGLIVE_DATA_PATH,
  megliveDataContent,
  verifyShapeProblem,
} from './sandbox-verify';
import { parseBizNoScenario, parseScenarioBody, type SandboxOutcome, type Scenario } from './scenario';
import { createWebhookSink, WEBHOOKS_PATH, WEBHOOKS_STATUS_PATH, type WebhookDelivery } from './webhook-sink';

export { VERIFY_PATH } from '../faceid/faceid-client';
// What the service's tests need besides startSandbox, importable from this one module.
export type { MegliveContent } from './meglive-package';
export { MEGLIVE_DATA_PATH } from './sandbox-verify';
export { VERIFY_OUTCOMES, VERIFY_RESULTS, type VerifyOutcome } from './verify-results';
export type { WebhookDelivery } from './webhook-sink';

/**
 * A stand-in for FaceID's App-GetBizToken and App-Verify that checks what FaceID checks and answers in
 * FaceID's formats, plus a webhook sink for the service's verdicts.
 * @see ../shared/seed/App-GetBizToken.md, ../shared/seed/App-Verify.md
 */
export interface SandboxOptions {
  apiKey: string;
  apiSecret: string;
  port: number;
  host: string;
  /** Added to every answer unless a scenario says otherwise. */
  latencyMs: number;
  log: Logger;
  /** `whsec_` + base64: with it, each webhook delivery the sink records says whether its signature holds. */
  webhookSecret?: string | undefined;
}

/** What the sandbox received: for tests that check exactly what went upstream. */
export interface ReceivedRequest {
  fields: Record<string, string[]>;
  files: Record<string, number[]>;
}

export interface Sandbox {
  url: string;
  /** The last get_biz_token requests received (at most 200), oldest first. */
  received: ReceivedRequest[];
  /** The last verify requests received (at most 200), oldest first. */
  receivedVerifications: ReceivedRequest[];
  /** TCP connections accepted since start. */
  connectionCount: () => number;
  /** Verify requests received since start (parsed ones, whatever their answer). */
  verifyCount: () => number;
  /**
   * A package that the sandbox's verify accepts for this biz_token, made in-process. Unlike
   * `POST /sandbox/meglive-data` it does not check that the token was issued, so tests can make any.
   */
  megliveData: (content: MegliveContent) => Buffer;
  /** The webhook deliveries kept (at most 100), oldest first. */
  webhooks: () => WebhookDelivery[];
  clearWebhooks: () => void;
  /** The status the webhook sink answers to the next `times` deliveries (all when undefined); 204 resets. */
  setWebhookStatus: (status: number, times?: number) => void;
  setScenario: (scenario: Scenario | undefined) => void;
  close: () => Promise<void>;
}

/** FaceID's own limit. @see ../shared/seed/App-GetBizToken.md (413) */
const MAX_BODY_BYTES = 20 * 1024 * 1024;
const SIGN_CLOCK_SKEW_SECONDS = 60;
const RECEIVED_KEPT = 200;

type Handler = (req: IncomingMessage, res: ServerResponse) => Promise<void> | void;

/** The answer FaceID gives for each outcome a scenario can ask for; DROP and HANG are handled apart. */
const OUTCOME_ANSWERS: Record<Exclude<SandboxOutcome, 'DROP' | 'HANG' | 'NOT_JSON'>, (firstImage: string) => Answer> = {
  INTERNAL_ERROR: () => faceIdError(500, 'INTERNAL_ERROR'),
  CONCURRENCY_LIMIT_EXCEEDED: () => faceIdError(403, 'CONCURRENCY_LIMIT_EXCEEDED'),
  CONCURRENCY_LIMIT_EXCEEDED_429: () => faceIdError(429, 'CONCURRENCY_LIMIT_EXCEEDED'),
  NO_FACE_FOUND: (firstImage) => faceIdError(400, `NO_FACE_FOUND:${firstImage}`),
  MULTIPLE_FACES: () => faceIdError(400, 'MULTIPLE_FACES'),
  LOW_QUALITY: () => faceIdError(400, 'LOW_QUALITY'),
  MORE_RETRY_TIMES: () => faceIdError(403, 'AUTHORIZATION_ERROR: MORE_RETRY_TIMES'),
  NO_DATA_SOURCE_PERMISSION: () => faceIdError(403, 'AUTHORIZATION_ERROR: NO_DATA_SOURCE_PERMISSION'),
  NO_VERIFY_PERMISSION: () => faceIdError(403, 'AUTHORIZATION_ERROR: NO_VERIFY_PERMISSION'),
  API_KEY_BE_DISCONTINUED: () => faceIdError(403, 'AUTHORIZATION_ERROR: API_KEY_BE_DISCONTINUED'),
  API_NOT_FOUND: () => faceIdError(404, 'API_NOT_FOUND'),
};

export async function startSandbox(options: SandboxOptions): Promise<Sandbox> {
  const received: ReceivedRequest[] = [];
  const receivedVerifications: ReceivedRequest[] = [];
  /** All token requests since start; `received` keeps only the last ones. */
  let requestCount = 0;
  let verifyRequests = 0;
  const singleUseSigns = new Map<string, number>();
  /** Per-biz_no count of scenario answers already given, for `OUTCOME*N`. */
  const bizNoHits = new Map<string, number>();
  const tokens = new IssuedTokens();
  const megliveKey = packageKey(options.apiSecret);
  const sink = createWebhookSink(options.webhookSecret);
  let globalScenario: Scenario | undefined;
  let globalHits = 0;
  let connections = 0;
  const sockets = new Set<Socket>();

  const routes = new Map<string, Handler>([
    [`POST ${GET_BIZ_TOKEN_PATH}`, getBizToken],
    [`POST ${VERIFY_PATH}`, verify],
    [`POST ${MEGLIVE_DATA_PATH}`, megliveData],
    ['PUT /sandbox/scenario', putScenario],
    [
      'DELETE /sandbox/scenario',
      (_req, res) => {
        globalScenario = undefined;
        send(res, { status: 200, body: { scenario: null } });
      },
    ],
    [
      'GET /sandbox/stats',
      (_req, res) =>
        send(res, {
          status: 200,
          body: { connections, requests: requestCount, verifications: verifyRequests },
        }),
    ],
    [`POST ${WEBHOOKS_PATH}`, sink.receive],
    [`GET ${WEBHOOKS_PATH}`, sink.list],
    [`DELETE ${WEBHOOKS_PATH}`, sink.clear],
    [`PUT ${WEBHOOKS_STATUS_PATH}`, sink.putStatus],
    ['GET /healthz', (_req, res) => send(res, { status: 200, body: { status: 'ok' } })],
  ]);

  const server = http.createServer((req, res) => {
    route(req, res).catch((error: unknown) => {
      options.log.error({ err: error }, 'sandbox failed');
      if (!res.headersSent) send(res, faceIdError(500, 'INTERNAL_ERROR'));
    });
  });
  server.on('connection', (socket) => {
    connections += 1;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });

  async function route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    const handler = routes.get(`${req.method} ${path}`);
    if (handler === undefined) return send(res, faceIdError(404, 'API_NOT_FOUND'));
    return handler(req, res);
  }

  async function putScenario(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const scenario = parseScenarioBody(await readJson(req));
    if (scenario === undefined) return send(res, { status: 400, body: { error: 'BAD_ARGUMENTS: scenario' } });
    globalScenario = scenario;
    globalHits = 0;
    return send(res, { status: 200, body: { scenario } });
  }

  /** Parses a FaceID API's form (20 MB, FaceID's 413), or answers for it; undefined when answered. */
  async function faceIdForm(req: IncomingMessage, res: ServerResponse): Promise<MultipartForm | undefined> {
    if (announcedOver(req, MAX_BODY_BYTES)) return void tooLarge(res);
    const parsed = await parseForm(req, MAX_BODY_BYTES);
    if (parsed === 'too-large') return void tooLarge(res);
    if (parsed === 'malformed') return void send(res, faceIdError(400, 'BAD_ARGUMENTS: body'));
    return parsed;
  }

  async function getBizToken(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const parsed = await faceIdForm(req, res);
    if (parsed === undefined) return;
    requestCount += 1;
    keep(received, parsed);

    const problem = checkSign(parsed) ?? checkParameters(parsed);
    const scenario = pickScenario(parsed.fields.get('biz_no')?.[0]);
    const firstImage = FILE_PARAMETERS.find((name) => parsed.files.has(name)) ?? 'image_ref1';
    const issue = (): Answer => {
      const bizToken = requestId();
      tokens.remember(bizToken, issuedToken(parsed));
      return { status: 200, body: { biz_token: bizToken, time_used: 18, request_id: requestId() } };
    };
    return answer(req, res, scenario, () => (problem === undefined ? { success: issue } : { problem }), firstImage);
  }

  /** @see ../shared/seed/App-Verify.md */
  async function verify(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const startedAt = Date.now();
    const parsed = await faceIdForm(req, res);
    if (parsed === undefined) return;
    verifyRequests += 1;
    keep(receivedVerifications, parsed);

    const problem = checkSign(parsed) ?? verifyShapeProblem(parsed);
    // The magic biz_no scenarios stay get_biz_token's: only the global one applies here.
    const scenario = pickScenario(undefined);
    const judge = (): Judgement =>
      problem === undefined ? judgeVerify(parsed, tokens, megliveKey, startedAt) : { problem };
    // Verify takes no image of its own: an image outcome (NO_FACE_FOUND) names the first reference photo.
    return answer(req, res, scenario, judge, 'image_ref1');
  }

  async function megliveData(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readBody(req, MEGLIVE_DATA_MAX_BYTES);
    if (body === 'too-large') return send(res, { status: 413, body: { error: 'Request Entity Too Large' } });
    const parsed = body === 'malformed' ? body : await parseForm(req, MEGLIVE_DATA_MAX_BYTES, body);
    if (typeof parsed === 'string') return send(res, { status: 400, body: { error: 'BAD_ARGUMENTS: body' } });
    const result = megliveDataContent(parsed, tokens);
    if ('problem' in result) return send(res, result.problem);
    return sendBytes(res, encodeMeglivePackage(result.content, megliveKey), 'meglive_data.bin');
  }

  /**
   * What both FaceID APIs share once a request is parsed: the latency, then the request's own problem, then
   * the scenario's outcome, then the answer. `judge` runs after the latency, so that what it checks (a
   * token not yet verified) still holds when the answer goes out.
   */
  async function answer(
    req: IncomingMessage,
    res: ServerResponse,
    scenario: Scenario | undefined,
    judge: () => Judgement,
    firstImage: string,
  ): Promise<void> {
    const latencyMs = scenario?.latencyMs || options.latencyMs;
    // unref: a delayed answer must not keep a closed sandbox's process alive.
    if (latencyMs > 0) await new Promise((resolve) => setTimeout(resolve, latencyMs).unref());
    const judged = judge();
    if ('problem' in judged) return send(res, judged.problem);
    const outcome = scenario?.outcome;
    switch (outcome) {
      case undefined:
        if (scenario?.error !== undefined) return send(res, faceIdError(400, scenario.error));
        return send(res, judged.success());
      case 'DROP':
        req.socket.destroy();
        return;
      case 'HANG':
        return; // never answers; the socket closes with the client or the sandbox
      case 'NOT_JSON':
        res.writeHead(502, { 'Content-Type': 'text/html' });
        res.end('<html><body>Bad Gateway</body></html>');
        return;
      default:
        return send(res, OUTCOME_ANSWERS[outcome](firstImage));
    }
  }

  /** A scenario applies while its count lasts: `OUTCOME*2` fails two requests, then the third succeeds. */
  function pickScenario(bizNo: string | undefined): Scenario | undefined {
    const fromBizNo = parseBizNoScenario(bizNo);
    if (fromBizNo !== undefined && bizNo !== undefined) {
      const hits = bizNoHits.get(bizNo) ?? 0;
      bizNoHits.set(bizNo, hits + 1);
      return fromBizNo.times !== undefined && hits >= fromBizNo.times
        ? { ...fromBizNo, outcome: undefined, error: undefined }
        : fromBizNo;
    }
    if (globalScenario === undefined) return undefined;
    globalHits += 1;
    return globalScenario.times !== undefined && globalHits > globalScenario.times ? undefined : globalScenario;
  }

  /** @see ../shared/seed/App-Authentication.md */
  function checkSign(form: MultipartForm): Answer | undefined {
    const sign = form.fields.get('sign')?.[0];
    const version = form.fields.get('sign_version')?.[0];
    if (sign === undefined) return faceIdError(400, 'MISSING_ARGUMENTS: sign');
    if (version === undefined) return faceIdError(400, 'MISSING_ARGUMENTS: sign_version');
    if (version !== SIGN_VERSION) return faceIdError(400, 'BAD_ARGUMENTS: sign_version');
    const decoded = decodeSign(sign);
    if (decoded === undefined || decoded.apiKey !== options.apiKey || !decoded.digestMatches(options.apiSecret)) {
      return faceIdError(403, 'AUTHENTICATION_ERROR');
    }
    const now = Math.floor(Date.now() / 1000);
    if (decoded.currentTime > now + SIGN_CLOCK_SKEW_SECONDS)
      return faceIdError(403, 'AUTHORIZATION_ERROR: INVALID_SIGN');
    if (decoded.expireTime === 0) {
      for (const [used, at] of singleUseSigns) if (at < now - SIGN_CLOCK_SKEW_SECONDS) singleUseSigns.delete(used);
      if (singleUseSigns.has(sign) || decoded.currentTime < now - SIGN_CLOCK_SKEW_SECONDS) {
        return faceIdError(403, 'AUTHORIZATION_ERROR: INVALID_SIGN');
      }
      singleUseSigns.set(sign, now);
      return undefined;
    }
    if (decoded.currentTime >= decoded.expireTime) return faceIdError(403, 'AUTHORIZATION_ERROR: INVALID_SIGN');
    if (decoded.expireTime < now) return faceIdError(403, 'AUTHORIZATION_ERROR: EXPIRED_SIGN');
    return undefined;
  }

  const started = await new Promise<http.Server>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => resolve(server));
  });
  const address = started.address() as AddressInfo;
  const hostForUrl = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return {
    url: `http://${hostForUrl === '0.0.0.0' ? '127.0.0.1' : hostForUrl}:${address.port}`,
    received,
    receivedVerifications,
    connectionCount: () => connections,
    verifyCount: () => verifyRequests,
    megliveData: (content) => encodeMeglivePackage(content, megliveKey),
    webhooks: sink.deliveries,
    clearWebhooks: sink.clearDeliveries,
    setWebhookStatus: sink.setStatus,
    setScenario: (scenario) => {
      globalScenario = scenario;
      globalHits = 0;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/** What tests see of a request: its fields, and its files by size. */
function keep(list: ReceivedRequest[], form: MultipartForm): void {
  list.push({
    fields: Object.fromEntries(form.fields),
    files: Object.fromEntries([...form.files].map(([name, files]) => [name, files.map((file) => file.length)])),
  });
  if (list.length > RECEIVED_KEPT) list.shift();
}

/** What verify will need of a token that get_biz_token issues for this (already checked) form. */
function issuedToken(form: MultipartForm): NewIssuedToken {
  return {
    livenessType: form.fields.get('liveness_type')?.[0] as LivenessType,
    comparisonType: form.fields.get('comparison_type')?.[0] as ComparisonType,
    bizNo: form.fields.get('biz_no')?.[0] ?? '',
    verbose: form.fields.get('verbose')?.[0] === '1',
    imageRef1: form.files.has('image_ref1'),
    imageRef2: form.files.has('image_ref2'),
  };
}

/** The seed's parameter rules, answered as FaceID answers them. */
function checkParameters(form: MultipartForm): Answer | undefined {
  const shape = shapeProblem(form, (name) => (isParameterName(name) ? PARAMETERS[name].kind : undefined));
  if (shape !== undefined) return faceIdError(400, shape);
  const comparison = form.fields.get('comparison_type')?.[0];
  const liveness = form.fields.get('liveness_type')?.[0];
  for (const name of ['liveness_type', 'comparison_type'] as const) {
    const value = name === 'liveness_type' ? liveness : comparison;
    const rule = PARAMETERS[name];
    if (value === undefined) return faceIdError(400, `MISSING_ARGUMENTS: ${name}`);
    if (rule.kind === 'text' && valueProblem(rule, value) !== undefined)
      return faceIdError(400, `BAD_ARGUMENTS: ${name}`);
  }
  const comparisonType = comparison as ComparisonType;
  const livenessType = liveness as LivenessType;
  for (const [name, rule] of Object.entries(PARAMETERS) as Array<[ParameterName, (typeof PARAMETERS)[ParameterName]]>) {
    const value = rule.kind === 'file' ? form.files.get(name)?.[0] : form.fields.get(name)?.[0];
    if (value === undefined) {
      if (isRequired(rule, comparisonType, livenessType)) return faceIdError(400, `MISSING_ARGUMENTS: ${name}`);
      continue;
    }
    if (!fitsTypes(rule, comparisonType, livenessType)) return faceIdError(400, `BAD_ARGUMENTS: ${name}`);
    if (rule.kind === 'text' && typeof value === 'string' && valueProblem(rule, value) !== undefined) {
      return faceIdError(400, `BAD_ARGUMENTS: ${name}`);
    }
  }
  for (const name of FILE_PARAMETERS) {
    const bytes = form.files.get(name)?.[0];
    if (bytes === undefined) continue;
    const inspection = inspectImage(bytes);
    // The seed writes these two differently: `CODE:<param>` and `INVALID_IMAGE_SIZE<param>`.
    if (!inspection.ok && inspection.problem === 'too-large') return faceIdError(400, `INVALID_IMAGE_SIZE${name}`);
    if (!inspection.ok) return faceIdError(400, `IMAGE_ERROR_UNSUPPORTED_FORMAT:${name}`);
  }
  return undefined;
}
