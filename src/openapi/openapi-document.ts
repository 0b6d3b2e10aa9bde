import { STATUS_CODES } from 'node:http';
import { z } from 'zod';
import type { Config } from '../config/load-config';
import { ERROR_CATALOG, type ErrorCode } from '../errors/error-catalog';
import { MAX_REQUEST_BYTES, PARAMETERS, type ParameterName } from '../faceid/parameters';
import { MAX_IMAGE_SIDE } from '../images/inspect-image';
import { BIZ_TOKENS_PATH } from '../routes/biz-tokens';
import { VERIFICATIONS_PATH } from '../routes/verifications';
import { isServerOwned } from '../token-request/validate-token-request';
import { READ_SCOPE } from '../use-cases/read-verification';
import { POLICY_REASONS, VERDICT_TABLE, VERDICTS } from '../verification/verdict';
import { VERIFICATION_COMPLETED } from '../webhooks/verification-event';

type Json = Record<string, unknown>;

/**
 * The OpenAPI 3.1 description of the public API, built from the same tables the service enforces (the
 * seed's parameters, the policy, the error catalog), so it cannot drift from what the code does.
 */
export function buildOpenApiDocument(config: Pick<Config, 'policy' | 'auth' | 'rateLimit'>): Json {
  const clientSendsUuid = config.auth.mode === 'none';
  const fields = (Object.entries(PARAMETERS) as Array<[ParameterName, (typeof PARAMETERS)[ParameterName]]>).filter(
    ([name]) => !isServerOwned(name, clientSendsUuid),
  );
  const properties = Object.fromEntries(
    fields.map(([name, rule]) => {
      if (rule.kind === 'file') {
        return [
          name,
          {
            type: 'string',
            contentMediaType: 'application/octet-stream',
            description: `${rule.description} ${appliesTo(rule)}`.trim(),
          },
        ];
      }
      const { $schema: _dialect, ...schema } = z.toJSONSchema(rule.schema) as Json;
      const allowed =
        name === 'liveness_type'
          ? config.policy.livenessTypes
          : name === 'comparison_type'
            ? config.policy.comparisonTypes
            : undefined;
      return [
        name,
        {
          ...schema,
          ...(allowed === undefined ? {} : { enum: allowed }),
          description: `${rule.description} ${appliesTo(rule)}`.trim(),
        },
      ];
    }),
  );

  const problemResponse = (codes: ErrorCode[]): Json => ({
    description: codes.map((code) => `\`${code}\`: ${ERROR_CATALOG[code].when}`).join(' '),
    headers: { 'X-Request-Id': { $ref: '#/components/headers/X-Request-Id' } },
    content: {
      'application/problem+json': {
        schema: { $ref: '#/components/schemas/Problem' },
        examples: Object.fromEntries(codes.map((code) => [code, { value: exampleProblem(code) }])),
      },
    },
  });
  const problemResponses = (codes: readonly ErrorCode[], extraHeaders: (status: number) => Json = () => ({})): Json =>
    Object.fromEntries(
      [...groupByStatus(codes)].map(([status, grouped]) => {
        const response = problemResponse(grouped);
        const headers = {
          ...(response.headers as Json),
          ...(status === 429 || status === 503 ? { 'Retry-After': { $ref: '#/components/headers/Retry-After' } } : {}),
          ...extraHeaders(status),
        };
        return [String(status), { ...response, headers }];
      }),
    );
  const security = config.auth.mode === 'jwt' ? [{ bearer: [] }] : [];
  const requestIdParameter = {
    name: 'X-Request-Id',
    in: 'header',
    required: false,
    description: 'Echoed back; generated when absent.',
    schema: { type: 'string', pattern: '^[A-Za-z0-9._:-]{1,128}$' },
  };
  const rateLimitHeaders = {
    RateLimit: { $ref: '#/components/headers/RateLimit' },
    'RateLimit-Policy': { $ref: '#/components/headers/RateLimit-Policy' },
  };

  return {
    openapi: '3.1.0',
    info: {
      title: 'faceid-token-service',
      version: '1',
      description:
        "Issues Megvii FaceID biz_tokens for the MegLiveStill SDK without the app ever holding FaceID's secret. Field names and value formats are FaceID's own (App-GetBizToken).",
    },
    paths: {
      [BIZ_TOKENS_PATH]: {
        post: {
          operationId: 'issueBizToken',
          summary: 'Get a biz_token for one liveness and comparison session',
          security,
          parameters: [
            {
              name: 'Idempotency-Key',
              in: 'header',
              required: false,
              description:
                "Same key and body from the same user within the token's lifetime: the same answer, no second FaceID call. A different body: 409.",
              schema: { type: 'string', minLength: 1, maxLength: 255, pattern: '^[\\x20-\\x7E]+$' },
            },
            requestIdParameter,
          ],
          requestBody: {
            required: true,
            description: `multipart/form-data, at most ${MAX_REQUEST_BYTES} bytes in all. Images are JPEG, PNG or BMP (by content), at most ${MAX_IMAGE_SIDE} px a side.`,
            content: {
              'multipart/form-data': {
                schema: {
                  type: 'object',
                  required: ['comparison_type', 'liveness_type'],
                  additionalProperties: false,
                  properties,
                },
              },
            },
          },
          responses: {
            '201': {
              description: "The token. Nothing else from FaceID's answer is passed on.",
              headers: {
                'X-Request-Id': { $ref: '#/components/headers/X-Request-Id' },
                'Idempotent-Replayed': {
                  description: '`true` when this is a stored answer replayed for a repeated Idempotency-Key.',
                  schema: { type: 'string', enum: ['true'] },
                },
                ...rateLimitHeaders,
              },
              content: { 'application/json': { schema: { $ref: '#/components/schemas/BizToken' } } },
            },
            ...problemResponses(TOKEN_ERRORS, (status) => (status === 429 || status === 503 ? rateLimitHeaders : {})),
          },
        },
      },
      [VERIFICATIONS_PATH]: {
        post: {
          operationId: 'verifyBizToken',
          summary: "Turn the SDK's meglive_data package into a verdict",
          description: `The first verdict for a biz_token is stored: a later request with it answers the same (201, \`Idempotent-Replayed: true\`) without calling FaceID. The operator's backend gets the whole result by webhook (see \`webhooks\`) or by GET.\n\n${verdictTableMarkdown()}\n\n${VERDICT_POLICY}`,
          security,
          parameters: [requestIdParameter],
          requestBody: {
            required: true,
            description: `multipart/form-data, at most ${MAX_REQUEST_BYTES} bytes in all.`,
            content: {
              'multipart/form-data': {
                schema: {
                  type: 'object',
                  required: ['biz_token'],
                  additionalProperties: false,
                  properties: {
                    biz_token: {
                      type: 'string',
                      description: 'A biz_token this service issued to the same user, within its hour.',
                    },
                    meglive_data: {
                      type: 'string',
                      contentMediaType: 'application/octet-stream',
                      description:
                        "The SDK's package, exactly as the SDK produced it. Required when the token was issued with liveness_type meglive or still; optional with raw_image.",
                    },
                  },
                },
              },
            },
          },
          responses: {
            '201': {
              description: 'The verdict (or the stored one, replayed).',
              headers: {
                'X-Request-Id': { $ref: '#/components/headers/X-Request-Id' },
                Location: { description: 'Where the verification can be read back.', schema: { type: 'string' } },
                'Idempotent-Replayed': {
                  description: '`true` when this biz_token was verified before and its verdict is replayed.',
                  schema: { type: 'string', enum: ['true'] },
                },
              },
              content: { 'application/json': { schema: { $ref: '#/components/schemas/Verdict' } } },
            },
            ...problemResponses(VERIFICATION_ERRORS),
          },
        },
      },
      [`${VERIFICATIONS_PATH}/{verification_id}`]: {
        get: {
          operationId: 'readVerification',
          summary: 'Read a verification back',
          description: `A caller whose JWT \`scope\` includes \`${READ_SCOPE}\` (the operator's backend) gets the whole result (the webhook's \`data\`, without the image); the user it belongs to gets the app's view; anyone else a 404. Kept for VERIFICATION_RETENTION_HOURS.`,
          security,
          parameters: [
            {
              name: 'verification_id',
              in: 'path',
              required: true,
              schema: { type: 'string', pattern: '^vf_[0-9A-Z]{26}$' },
            },
            requestIdParameter,
          ],
          responses: {
            '200': {
              description: "The backend's view, or the owner's.",
              content: {
                'application/json': {
                  schema: {
                    oneOf: [
                      { $ref: '#/components/schemas/VerificationData' },
                      { $ref: '#/components/schemas/Verdict' },
                    ],
                  },
                },
              },
            },
            ...problemResponses(['UNAUTHENTICATED', 'NOT_FOUND', 'INTERNAL_ERROR']),
          },
        },
      },
      '/healthz': {
        get: {
          summary: 'The process is alive',
          responses: {
            '200': { description: 'Alive', content: { 'application/json': { schema: { type: 'object' } } } },
          },
        },
      },
      '/readyz': {
        get: {
          summary: 'Ready to serve (configuration valid, Redis reachable when configured, not shutting down)',
          responses: {
            '200': {
              description: 'Ready, or degraded (Redis away: per-process limits)',
              content: { 'application/json': { schema: { $ref: '#/components/schemas/Readiness' } } },
            },
            '503': {
              description: 'Shutting down',
              content: { 'application/json': { schema: { $ref: '#/components/schemas/Readiness' } } },
            },
          },
        },
      },
      '/metrics': {
        get: {
          summary: 'Prometheus metrics (unless METRICS_PORT moves them)',
          responses: {
            '200': { description: 'Prometheus text format', content: { 'text/plain': { schema: { type: 'string' } } } },
          },
        },
      },
      '/openapi.json': {
        get: {
          summary: 'This document',
          responses: {
            '200': { description: 'OpenAPI 3.1', content: { 'application/json': { schema: { type: 'object' } } } },
          },
        },
      },
    },
    webhooks: {
      [VERIFICATION_COMPLETED]: {
        post: {
          summary: "A verdict, POSTed to WEBHOOK_URL (the operator's backend)",
          description:
            'Signed as Standard Webhooks specifies: `webhook-signature` is `v1,` + base64 of HMAC-SHA256 over `<webhook-id>.<webhook-timestamp>.<body>`, keyed by the bytes of WEBHOOK_SECRET after `whsec_`. Delivered at least once: a 2xx within 10 s ends the delivery; otherwise it is retried with exponential back-off up to WEBHOOK_MAX_ATTEMPTS, with the same `webhook-id`.',
          parameters: [
            {
              name: 'webhook-id',
              in: 'header',
              required: true,
              schema: { type: 'string' },
              description: 'Stable across the attempts of one event.',
            },
            {
              name: 'webhook-timestamp',
              in: 'header',
              required: true,
              schema: { type: 'string', pattern: '^\\d+$' },
              description: 'Unix seconds of the attempt.',
            },
            {
              name: 'webhook-signature',
              in: 'header',
              required: true,
              schema: { type: 'string' },
              description: 'Space-separated `v1,<base64>` signatures.',
            },
          ],
          requestBody: {
            required: true,
            content: { 'application/json': { schema: { $ref: '#/components/schemas/VerificationEvent' } } },
          },
          responses: { '2XX': { description: 'Taken: the delivery ends.' } },
        },
      },
    },
    components: {
      responses: {
        // Any route the service does not have; no operation lists it, so it stands here once.
        NotFound: problemResponse(['NOT_FOUND']),
      },
      securitySchemes: {
        bearer: {
          type: 'http',
          scheme: 'bearer',
          bearerFormat: 'JWT',
          description: "The app user's JWT; its `sub` is the user.",
        },
      },
      headers: {
        'X-Request-Id': {
          description: "The request's id, echoed or generated; quote it when reporting a problem.",
          schema: { type: 'string' },
        },
        'Retry-After': {
          description: 'Seconds to wait before trying again.',
          schema: { type: 'string', pattern: '^\\d+$' },
        },
        RateLimit: {
          description: `The caller's remaining requests and seconds to the window's reset (draft-ietf-httpapi-ratelimit-headers-10), e.g. "per-user";r=4;t=60.`,
          schema: { type: 'string' },
        },
        'RateLimit-Policy': {
          description: `The per-user policy, e.g. "per-user";q=${config.rateLimit.max};w=${config.rateLimit.windowSeconds}.`,
          schema: { type: 'string' },
        },
      },
      schemas: {
        BizToken: {
          type: 'object',
          required: ['biz_token', 'expires_at'],
          additionalProperties: false,
          properties: {
            biz_token: {
              type: 'string',
              description: 'Single-use token for the MegLiveStill SDK.',
              examples: ['1531397038,f0b9eea0-6a2d-486c-a1ba-42fdf843e8cc'],
            },
            expires_at: { type: 'string', format: 'date-time', description: 'One hour after issue.' },
          },
        },
        Verdict: {
          type: 'object',
          required: ['verification_id', 'biz_token', 'verdict', 'reason', 'verified_at'],
          additionalProperties: false,
          properties: {
            verification_id: { type: 'string', examples: ['vf_01JDQ6Z8V4W3M5N7P9R2T4X6Y8'] },
            biz_token: { type: 'string' },
            verdict: { type: 'string', enum: [...VERDICTS], description: verdictMeaning() },
            reason: {
              type: 'string',
              description: `FaceID's result_message, or the service's own ${POLICY_REASONS.map((reason) => `\`${reason}\``).join(' / ')} where its policy decided.`,
            },
            verified_at: { type: 'string', format: 'date-time' },
          },
        },
        VerificationData: {
          type: 'object',
          description: "The whole result, for the operator's backend.",
          required: [
            'verification_id',
            'user',
            'biz_token',
            'biz_no',
            'liveness_type',
            'comparison_type',
            'verdict',
            'reason',
            'result_code',
            'result_message',
            'faceid_request_id',
            'verified_at',
          ],
          properties: {
            verification_id: { type: 'string' },
            user: { type: ['string', 'null'], description: 'The JWT `sub` of the user; null under AUTH_MODE=none.' },
            biz_token: { type: 'string' },
            biz_no: { type: 'string' },
            liveness_type: { type: 'string' },
            comparison_type: { type: 'string', enum: ['0', '1'] },
            verdict: { type: 'string', enum: [...VERDICTS] },
            reason: { type: 'string' },
            result_code: { type: 'integer' },
            result_message: { type: 'string' },
            verification: {
              type: 'object',
              description: 'Only when FaceID sent it (verbose, 1000 and 2000 series).',
              additionalProperties: { $ref: '#/components/schemas/Comparison' },
            },
            attack_result: {
              type: 'object',
              description: 'Only when FaceID sent it (not in the 4200 series).',
              properties: { score: { type: 'number' }, threshold: { type: 'number' }, result: { type: 'boolean' } },
            },
            faceid_request_id: { type: ['string', 'null'] },
            verified_at: { type: 'string', format: 'date-time' },
          },
        },
        Comparison: {
          type: 'object',
          properties: {
            confidence: { type: 'number' },
            thresholds: { type: 'object', additionalProperties: { type: 'number' } },
          },
        },
        VerificationEvent: {
          type: 'object',
          required: ['type', 'timestamp', 'data'],
          properties: {
            type: { type: 'string', enum: [VERIFICATION_COMPLETED] },
            timestamp: { type: 'string', format: 'date-time' },
            data: {
              allOf: [
                { $ref: '#/components/schemas/VerificationData' },
                {
                  type: 'object',
                  properties: {
                    image_best: {
                      type: 'string',
                      contentEncoding: 'base64',
                      description: "FaceID's best live frame; only with WEBHOOK_INCLUDE_IMAGE=true.",
                    },
                  },
                },
              ],
            },
          },
        },
        Problem: {
          type: 'object',
          description: 'RFC 9457 problem details.',
          required: ['type', 'title', 'status', 'code', 'detail', 'request_id'],
          properties: {
            type: { type: 'string' },
            title: { type: 'string' },
            status: { type: 'integer' },
            code: { type: 'string', enum: Object.keys(ERROR_CATALOG) },
            param: { type: 'string', description: 'The field (or header) at fault, when one is.' },
            detail: { type: 'string' },
            request_id: { type: 'string' },
          },
        },
        Readiness: {
          type: 'object',
          required: ['status', 'checks'],
          properties: {
            status: { type: 'string', enum: ['ready', 'degraded', 'not-ready'] },
            checks: { type: 'object', additionalProperties: { type: 'string' } },
          },
        },
      },
    },
  };
}

/** The codes each operation can answer; NOT_FOUND for unknown routes is a shared component. */
const VERIFICATION_ONLY: readonly ErrorCode[] = [
  'BIZ_TOKEN_NOT_FOUND',
  'MEGLIVE_DATA_ERROR',
  'MEGLIVE_DATA_BIZ_TOKEN_NOT_MATCH',
];
const TOKEN_ERRORS = (Object.keys(ERROR_CATALOG) as ErrorCode[]).filter(
  (code) => code !== 'NOT_FOUND' && !VERIFICATION_ONLY.includes(code),
);
const VERIFICATION_ERRORS: readonly ErrorCode[] = [
  'MISSING_ARGUMENTS',
  'BAD_ARGUMENTS',
  ...VERIFICATION_ONLY,
  'UNAUTHENTICATED',
  'PAYLOAD_TOO_LARGE',
  'UNSUPPORTED_MEDIA_TYPE',
  'RETRY_LIMIT_REACHED',
  'INTERNAL_ERROR',
  'UPSTREAM_REJECTED',
  'UPSTREAM_ERROR',
  'UPSTREAM_BUSY',
  'UPSTREAM_TIMEOUT',
];

function groupByStatus(codes: readonly ErrorCode[]): Map<number, ErrorCode[]> {
  const byStatus = new Map<number, ErrorCode[]>();
  for (const code of codes) {
    const { status } = ERROR_CATALOG[code];
    byStatus.set(status, [...(byStatus.get(status) ?? []), code]);
  }
  return byStatus;
}

/** The verdict table as Markdown, from the table the service decides with (the README holds the same rows). */
export function verdictTableMarkdown(): string {
  const rows = VERDICT_TABLE.map((rule) => `| ${rule.faceid} | \`${rule.verdict}\` |`);
  return ["| FaceID's result | verdict |", '|---|---|', ...rows].join('\n');
}

const VERDICT_POLICY =
  "Policy (the operator's configuration): a result that would pass but whose `attack_result` says attack (`result` true, or `score >= threshold`) is `failed`, reason `ATTACK_SUSPECTED`; with POLICY_FORCE_COMPARE=1 a passing result without `attack_result` is too. With POLICY_FALSE_ACCEPT_RATE set, a passing result is `failed`, reason `BELOW_CONFIDENCE_THRESHOLD`, unless every comparison present reaches the threshold at that rate (no comparison at all fails too).";

const verdictMeaning = (): string =>
  '`passed`: the user is verified. `failed`: not verified (not the same person, a suspected attack, bad identity data). `retry`: nothing was decided (the capture or the data source failed); start again with a new biz_token.';

function appliesTo(rule: (typeof PARAMETERS)[ParameterName]): string {
  const parts: string[] = [];
  if (rule.requiredFor?.comparisonTypes !== undefined)
    parts.push(`Required with comparison_type ${rule.requiredFor.comparisonTypes.join('/')}.`);
  if (rule.requiredFor?.livenessTypes !== undefined)
    parts.push(`Required with liveness_type ${rule.requiredFor.livenessTypes.join('/')}.`);
  if (rule.comparisonTypes !== undefined) parts.push(`Only with comparison_type ${rule.comparisonTypes.join('/')}.`);
  if (rule.livenessTypes !== undefined) parts.push(`Only with liveness_type ${rule.livenessTypes.join('/')}.`);
  return parts.join(' ');
}

function exampleProblem(code: ErrorCode): Json {
  const entry: { status: number; example: { detail: string; param?: string } } = ERROR_CATALOG[code];
  return {
    type: 'about:blank',
    title: STATUS_CODES[entry.status],
    status: entry.status,
    code,
    ...(entry.example.param === undefined ? {} : { param: entry.example.param }),
    detail: entry.example.detail,
    request_id: '5d1f0c1e-8a44-4c55-9a0e-0c2b8f1d7e21',
  };
}
