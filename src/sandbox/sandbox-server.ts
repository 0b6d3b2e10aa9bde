import { randomUUID } from 'node:crypto';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import busboy from 'busboy';
import type { Logger } from 'pino';
import { GET_BIZ_TOKEN_PATH } from '../faceid/faceid-client';
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
import { parseBizNoScenario, parseScenarioBody, type SandboxOutcome, type Scenario } from './scenario';

/**
 * A stand-in for FaceID's App-GetBizToken that checks what FaceID checks and answers in FaceID's formats.
 * @see ../shared/seed/App-GetBizToken.md
 */
export interface SandboxOptions {
  apiKey: string;
  apiSecret: string;
  port: number;
  host: string;
  /** Added to every answer unless a scenario says otherwise. */
  latencyMs: number;
  log: Logger;
}

/** What the sandbox received: for tests that check exactly what went upstream. */
export interface ReceivedRequest {
  fields: Record<string, string[]>;
  files: Record<string, number[]>;
}

export interface Sandbox {
  url: string;
  /** The last requests received (at most 200), oldest first. */
  received: ReceivedRequest[];
  /** TCP connections accepted since start. */
  connectionCount: () => number;
  setScenario: (scenario: Scenario | undefined) => void;
  close: () => Promise<void>;
}

/** FaceID's own limit. @see ../shared/seed/App-GetBizToken.md (413) */
const MAX_BODY_BYTES = 20 * 1024 * 1024;
const SIGN_CLOCK_SKEW_SECONDS = 60;
const RECEIVED_KEPT = 200;

interface Answer {
  status: number;
  body: Record<string, unknown>;
}

const faceIdError = (status: number, error: string): Answer => ({
  status,
  body: { error, request_id: requestId(), time_used: 1 },
});
const requestId = (): string => `${Math.floor(Date.now() / 1000)},${randomUUID()}`;

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
  /** All token requests since start; `received` keeps only the last ones. */
  let requestCount = 0;
  const singleUseSigns = new Map<string, number>();
  /** Per-biz_no count of scenario answers already given, for `OUTCOME*N`. */
  const bizNoHits = new Map<string, number>();
  let globalScenario: Scenario | undefined;
  let globalHits = 0;
  let connections = 0;
  const sockets = new Set<Socket>();

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
    if (req.method === 'POST' && path === GET_BIZ_TOKEN_PATH) return getBizToken(req, res);
    if (path === '/sandbox/scenario' && req.method === 'PUT') {
      const scenario = parseScenarioBody(await readJson(req));
      if (scenario === undefined) return send(res, { status: 400, body: { error: 'BAD_ARGUMENTS: scenario' } });
      globalScenario = scenario;
      globalHits = 0;
      return send(res, { status: 200, body: { scenario } });
    }
    if (path === '/sandbox/scenario' && req.method === 'DELETE') {
      globalScenario = undefined;
      return send(res, { status: 200, body: { scenario: null } });
    }
    if (path === '/sandbox/stats' && req.method === 'GET') {
      return send(res, { status: 200, body: { connections, requests: requestCount } });
    }
    if (path === '/healthz' && req.method === 'GET') return send(res, { status: 200, body: { status: 'ok' } });
    return send(res, faceIdError(404, 'API_NOT_FOUND'));
  }

  async function getBizToken(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (Number(req.headers['content-length'] ?? 0) > MAX_BODY_BYTES) return tooLarge(res);
    const parsed = await parseForm(req);
    if (parsed === 'too-large') return tooLarge(res);
    if (parsed === 'malformed') return send(res, faceIdError(400, 'BAD_ARGUMENTS: body'));
    requestCount += 1;
    received.push({
      fields: Object.fromEntries(parsed.fields),
      files: Object.fromEntries([...parsed.files].map(([name, files]) => [name, files.map((file) => file.length)])),
    });
    if (received.length > RECEIVED_KEPT) received.shift();

    const problem = checkSign(parsed) ?? checkParameters(parsed);
    const scenario = pickScenario(parsed.fields.get('biz_no')?.[0]);
    const latencyMs = scenario?.latencyMs || options.latencyMs;
    // unref: a delayed answer must not keep a closed sandbox's process alive.
    if (latencyMs > 0) await new Promise((resolve) => setTimeout(resolve, latencyMs).unref());
    if (problem !== undefined) return send(res, problem);
    const outcome = scenario?.outcome;
    switch (outcome) {
      case undefined:
        if (scenario?.error !== undefined) return send(res, faceIdError(400, scenario.error));
        return send(res, { status: 200, body: { biz_token: requestId(), time_used: 18, request_id: requestId() } });
      case 'DROP':
        req.socket.destroy();
        return;
      case 'HANG':
        return; // never answers; the socket closes with the client or the sandbox
      case 'NOT_JSON':
        res.writeHead(502, { 'Content-Type': 'text/html' });
        res.end('<html><body>Bad Gateway</body></html>');
        return;
      default: {
        const firstImage = FILE_PARAMETERS.find((name) => parsed.files.has(name)) ?? 'image_ref1';
        return send(res, OUTCOME_ANSWERS[outcome](firstImage));
      }
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
    connectionCount: () => connections,
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

/** The seed's parameter rules, answered as FaceID answers them. */
function checkParameters(form: MultipartForm): Answer | undefined {
  for (const [name, values] of [...form.fields, ...form.files] as Array<[string, unknown[]]>) {
    if (!isParameterName(name) || values.length > 1) return faceIdError(400, `BAD_ARGUMENTS: ${name}`);
    if ((PARAMETERS[name].kind === 'file') !== form.files.has(name)) return faceIdError(400, `BAD_ARGUMENTS: ${name}`);
  }
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

function parseForm(req: IncomingMessage): Promise<MultipartForm | 'too-large' | 'malformed'> {
  return new Promise((resolve) => {
    const fields = new Map<string, string[]>();
    const files = new Map<string, Buffer[]>();
    let totalBytes = 0;
    let settled = false;
    const finish = (result: MultipartForm | 'too-large' | 'malformed'): void => {
      if (settled) return;
      settled = true;
      if (typeof result === 'string') {
        req.unpipe();
        req.resume();
      }
      resolve(result);
    };
    let parser: busboy.Busboy;
    try {
      parser = busboy({
        headers: req.headers,
        limits: { fileSize: MAX_BODY_BYTES, fields: 100, files: 10, fieldSize: 64 * 1024 },
      });
    } catch {
      finish('malformed');
      req.resume();
      return;
    }
    req.on('data', (chunk: Buffer) => {
      totalBytes += chunk.length;
      if (totalBytes > MAX_BODY_BYTES) finish('too-large');
    });
    parser.on('field', (name, value) => fields.set(name, [...(fields.get(name) ?? []), value]));
    parser.on('file', (name, stream) => {
      const chunks: Buffer[] = [];
      stream.on('data', (chunk: Buffer) => chunks.push(chunk));
      stream.on('limit', () => finish('too-large'));
      stream.on('end', () => files.set(name, [...(files.get(name) ?? []), Buffer.concat(chunks)]));
    });
    parser.on('close', () => finish({ fields, files }));
    parser.on('error', () => finish('malformed'));
    req.on('error', () => finish('malformed'));
    req.pipe(parser);
  });
}

function tooLarge(res: ServerResponse): void {
  // FaceID's 413 is plain text, not JSON. @see ../shared/seed/App-GetBizToken.md
  res.writeHead(413, { 'Content-Type': 'text/plain', Connection: 'close' });
  res.end('Request Entity Too Large');
}

function send(res: ServerResponse, answer: Answer): void {
  const body = JSON.stringify(answer.body);
  res.writeHead(answer.status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > 4096) return undefined;
    chunks.push(chunk as Buffer);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    return undefined;
  }
}
