import { STATUS_CODES } from 'node:http';
import { z } from 'zod';
import type { Config } from '../config/load-config';
import { ERROR_CATALOG, type ErrorCode } from '../errors/error-catalog';
import { MAX_REQUEST_BYTES, PARAMETERS, type ParameterName } from '../faceid/parameters';
import { MAX_IMAGE_SIDE } from '../images/inspect-image';
import { BIZ_TOKENS_PATH } from '../routes/biz-tokens';
import { isServerOwned } from '../token-request/validate-token-request';

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
  const byStatus = new Map<number, ErrorCode[]>();
  for (const [code, entry] of Object.entries(ERROR_CATALOG) as Array<[ErrorCode, (typeof ERROR_CATALOG)[ErrorCode]]>) {
    if (code === 'NOT_FOUND') continue;
    byStatus.set(entry.status, [...(byStatus.get(entry.status) ?? []), code]);
  }
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
          security: config.auth.mode === 'jwt' ? [{ bearer: [] }] : [],
          parameters: [
            {
              name: 'Idempotency-Key',
              in: 'header',
              required: false,
              description:
                "Same key and body from the same user within the token's lifetime: the same answer, no second FaceID call. A different body: 409.",
              schema: { type: 'string', minLength: 1, maxLength: 255, pattern: '^[\\x20-\\x7E]+$' },
            },
            {
              name: 'X-Request-Id',
              in: 'header',
              required: false,
              description: 'Echoed back; generated when absent.',
              schema: { type: 'string', pattern: '^[A-Za-z0-9._:-]{1,128}$' },
            },
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
            ...Object.fromEntries(
              [...byStatus].map(([status, codes]) => {
                const response = problemResponse(codes);
                if (status === 429 || status === 503) {
                  response.headers = {
                    ...(response.headers as Json),
                    'Retry-After': { $ref: '#/components/headers/Retry-After' },
                    ...rateLimitHeaders,
                  };
                }
                return [String(status), response];
              }),
            ),
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
