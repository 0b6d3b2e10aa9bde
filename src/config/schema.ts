import { z } from 'zod';
import { COMPARISON_TYPES, LIVENESS_TYPES, MAX_REQUEST_BYTES, SECURITY_LEVELS } from '../faceid/parameters';
import { LOG_LEVELS } from '../logging/logger';
import { FALSE_ACCEPT_RATES } from '../verification/verdict';

/**
 * Every environment variable the service reads, with its default and meaning. The README's configuration
 * table and `.env.example` are checked against this object by a test, so this is the single source.
 */

const integer = (min: number, max: number) => z.coerce.number().int().min(min).max(max);
const optionalText = z.string().trim().min(1).optional();
const flag = z.enum(['0', '1']);
const booleanText = z.enum(['true', 'false']).transform((value) => value === 'true');
const csv = <T extends string>(values: readonly [T, ...T[]]) =>
  z
    .string()
    .transform((text) =>
      text
        .split(',')
        .map((part) => part.trim())
        .filter((part) => part.length > 0),
    )
    .pipe(z.array(z.enum(values)).min(1, 'must name at least one value'));

/** Standard Webhooks' key format: base64 that every library decodes alike, so the backend can load the same key. */
function isWebhookSecret(text: string): boolean {
  if (!text.startsWith('whsec_')) return false;
  const encoded = text.slice('whsec_'.length);
  const key = Buffer.from(encoded, 'base64');
  return key.length >= 24 && key.toString('base64') === encoded;
}

export const envSchema = z.object({
  NODE_ENV: z
    .enum(['development', 'test', 'production'])
    .default('development')
    .describe('`production` turns on the start-up refusals (HTTPS FaceID, real keys, JWT auth, UUID_SALT).'),
  PORT: integer(0, 65535).default(3000).describe('Port of the public API.'),
  LOG_LEVEL: z.enum(LOG_LEVELS).default('info').describe('pino log level.'),

  FACEID_BASE_URL: z
    .url({ protocol: /^https?$/ })
    // FaceID authenticates by the sign: credentials in the URL would be sent nowhere, silently.
    .refine((text) => {
      // Only a URL has a user; anything else is already refused above.
      const url = URL.canParse(text) ? new URL(text) : undefined;
      return url === undefined || (url.username === '' && url.password === '');
    }, 'no user or password in the URL')
    .default('https://api.megvii.com')
    .describe(
      'FaceID host; the service posts to `<base>/faceid/v3/sdk/get_biz_token`. Regional hosts: api-sgp, api-idn.',
    ),
  FACEID_API_KEY: optionalText.describe('FaceID api_key. Unset outside production: the built-in sandbox is used.'),
  FACEID_API_SECRET: optionalText.describe('FaceID api_secret. Never logged.'),
  FACEID_API_SECRET_FILE: optionalText.describe(
    'Path of a file holding the api_secret (container secrets); excludes FACEID_API_SECRET.',
  ),
  FACEID_TIMEOUT_MS: integer(100, 120_000)
    .default(10_000)
    .describe('Bound on the whole upstream exchange, retries included.'),
  FACEID_MAX_RETRIES: integer(0, 10)
    .default(2)
    .describe('Retries of INTERNAL_ERROR, CONCURRENCY_LIMIT_EXCEEDED and failed connections.'),
  FACEID_MAX_CONCURRENCY: integer(1, 10_000)
    .default(32)
    .describe('Most FaceID calls in flight at once (the account concurrency limit).'),
  FACEID_QUEUE_TIMEOUT_MS: integer(0, 60_000)
    .default(2_000)
    .describe('Longest wait for a free upstream slot before 503 UPSTREAM_BUSY.'),
  FACEID_BREAKER_FAILURES: integer(1, 1000)
    .default(5)
    .describe('Consecutive upstream failures (timeouts, 5xx, lost connections) that open the circuit breaker.'),
  FACEID_BREAKER_OPEN_MS: integer(100, 600_000)
    .default(10_000)
    .describe('How long the open breaker fails fast before one probe call.'),
  FACEID_DAILY_BUDGET: integer(1, 1_000_000_000)
    .optional()
    .describe('Optional ceiling on upstream calls per UTC day, shared through Redis.'),

  AUTH_MODE: z
    .enum(['jwt', 'none'])
    .optional()
    .describe('`jwt` (default when a key source is set) or `none` (development only).'),
  AUTH_JWT_SECRET: z
    .string()
    .min(32, 'must be at least 32 characters')
    .optional()
    .describe('HS256 shared secret for caller JWTs.'),
  AUTH_JWT_PUBLIC_KEY: optionalText.describe(
    'PEM public key (RSA, EC or Ed25519) for caller JWTs; `\\n` escapes are accepted.',
  ),
  AUTH_JWKS_URL: z
    .url({ protocol: /^https?$/ })
    .optional()
    .describe('JWKS URL for caller JWTs; keys are cached and refreshed.'),
  AUTH_JWT_ISSUER: optionalText.describe('Required `iss` of caller JWTs.'),
  AUTH_JWT_AUDIENCE: optionalText.describe('Required `aud` of caller JWTs.'),
  AUTH_CLOCK_TOLERANCE_SECONDS: integer(0, 300).default(5).describe('Clock skew allowed on `exp` and `nbf`.'),
  UUID_SALT: z
    .string()
    .min(16, 'must be at least 16 characters')
    .optional()
    .describe('Secret salt of the pseudonymous user id sent to FaceID as `uuid`; required in production.'),

  REDIS_URL: optionalText.describe(
    'Redis shared by all instances (limits, budget, idempotency, issued tokens, verifications, webhook queue). Unset: per-process memory.',
  ),
  REDIS_KEY_PREFIX: z
    .string()
    .regex(/^[\w:.-]{1,64}$/, 'letters, digits, _ : . - only')
    .default('faceid-token:')
    .describe('Prefix of every Redis key.'),
  REDIS_CONNECT_TIMEOUT_MS: integer(100, 60_000).default(2_000).describe('Redis connect timeout.'),
  REDIS_COMMAND_TIMEOUT_MS: integer(50, 60_000)
    .default(500)
    .describe('Redis command timeout; past it the per-process fallback answers.'),
  REDIS_MAX_RECONNECT_DELAY_MS: integer(100, 60_000).default(2_000).describe('Upper bound of the reconnect back-off.'),

  RATE_LIMIT_MAX: integer(1, 1_000_000).default(5).describe('Token requests per user per window.'),
  RATE_LIMIT_WINDOW_SECONDS: integer(1, 86_400).default(60).describe('Rate-limit window.'),
  TRUST_PROXY: z
    .string()
    .default('false')
    .describe('Express `trust proxy`: `false`, a hop count, or comma-separated addresses/CIDRs of your proxies.'),

  POLICY_LIVENESS_TYPES: csv(LIVENESS_TYPES)
    .prefault(LIVENESS_TYPES.join(','))
    .describe('Liveness types callers may ask for.'),
  POLICY_COMPARISON_TYPES: csv(COMPARISON_TYPES)
    .prefault(COMPARISON_TYPES.join(','))
    .describe('Comparison types callers may ask for.'),
  POLICY_SECURITY_LEVEL: z.enum(SECURITY_LEVELS).default('2').describe('`security_level` sent on every request.'),
  POLICY_FORCE_COMPARE: flag.default('0').describe('`force_compare` sent on every request.'),
  POLICY_FALSE_ACCEPT_RATE: z
    .enum(FALSE_ACCEPT_RATES)
    .optional()
    .describe(
      'Unset, or `1e-3` to `1e-6`: sends `verbose=1`, and a verification passes only if every comparison reaches the threshold at this false-accept rate.',
    ),

  WEBHOOK_URL: z
    .url({ protocol: /^https?$/ })
    .optional()
    .describe("The operator's backend: each verdict is POSTed there, signed (Standard Webhooks). HTTPS in production."),
  WEBHOOK_SECRET: z
    .string()
    .refine(isWebhookSecret, 'must be `whsec_` followed by at least 24 bytes in padded base64')
    .optional()
    .describe('Signing key of the webhooks, `whsec_` + base64 of at least 24 random bytes; required with WEBHOOK_URL.'),
  WEBHOOK_INCLUDE_IMAGE: booleanText
    .prefault('false')
    .describe("Send FaceID's best live frame (`image_best`) in the webhook; kept only until its delivery ends."),
  WEBHOOK_MAX_ATTEMPTS: integer(1, 100).default(10).describe('Delivery attempts of one webhook before it is given up.'),
  WEBHOOK_RETRY_DELAY_MS: integer(100, 3_600_000)
    .default(10_000)
    .describe('Delay before the second attempt; each further one doubles it, at most one hour apart.'),
  VERIFICATION_RETENTION_HOURS: integer(1, 8_760)
    .default(72)
    .describe('How long verification records can be read back (GET /v1/verifications/{id}).'),

  UPLOAD_MEMORY_MB: integer(MAX_REQUEST_BYTES / 1024 / 1024, 4096)
    .default(32)
    .describe('Request bodies held in memory at once, in MiB; further uploads wait unread.'),
  UPLOAD_QUEUE_TIMEOUT_MS: integer(0, 120_000)
    .default(10_000)
    .describe('Longest wait of an upload for memory before 503 UPSTREAM_BUSY.'),
  CORS_ORIGINS: optionalText.describe('Comma-separated origins allowed by CORS; unset: CORS closed.'),
  METRICS_PORT: integer(1, 65535).optional().describe('Serve /metrics on this port only (not on PORT).'),
  DOCS_ENABLED: booleanText.prefault('true').describe('Serve the API docs at /docs.'),
  SHUTDOWN_TIMEOUT_MS: integer(0, 120_000).default(10_000).describe('Longest wait for in-flight requests on SIGTERM.'),
});

export type Env = z.infer<typeof envSchema>;

export interface DocumentedVariable {
  name: string;
  /** The default as it would be written in the environment; undefined when the variable has none. */
  defaultValue: string | undefined;
  description: string;
}

/** The variables as operators see them: name, default, meaning (for .env.example, the README and their test). */
export function documentedVariables(): DocumentedVariable[] {
  const jsonSchema = z.toJSONSchema(envSchema, { io: 'input', unrepresentable: 'any' }) as {
    properties: Record<string, { default?: unknown; description?: string }>;
  };
  return Object.entries(jsonSchema.properties).map(([name, property]) => ({
    name,
    defaultValue: property.default === undefined ? undefined : String(property.default),
    description: property.description ?? '',
  }));
}
