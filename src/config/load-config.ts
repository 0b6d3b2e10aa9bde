import { createPublicKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import type { ComparisonType, LivenessType } from '../faceid/parameters';
import type { FalseAcceptRate } from '../verification/verdict';
import { type Env, envSchema } from './schema';

export interface FaceIdCredentials {
  apiKey: string;
  apiSecret: string;
}

export interface Config {
  nodeEnv: Env['NODE_ENV'];
  port: number;
  logLevel: Env['LOG_LEVEL'];
  faceid: {
    baseUrl: string;
    /** Undefined means: run against the built-in sandbox (never in production). */
    credentials: FaceIdCredentials | undefined;
    timeoutMs: number;
    maxRetries: number;
    maxConcurrency: number;
    queueTimeoutMs: number;
    breakerFailures: number;
    breakerOpenMs: number;
    dailyBudget: number | undefined;
  };
  uploads: { memoryBytes: number; queueTimeoutMs: number };
  auth: {
    mode: 'jwt' | 'none';
    jwtSecret: string | undefined;
    publicKeyPem: string | undefined;
    jwksUrl: string | undefined;
    issuer: string | undefined;
    audience: string | undefined;
    clockToleranceSeconds: number;
    uuidSalt: string;
  };
  redis: {
    url: string | undefined;
    keyPrefix: string;
    connectTimeoutMs: number;
    commandTimeoutMs: number;
    maxReconnectDelayMs: number;
  };
  rateLimit: { max: number; windowSeconds: number };
  trustProxy: boolean | number | string[];
  policy: {
    livenessTypes: LivenessType[];
    comparisonTypes: ComparisonType[];
    securityLevel: '1' | '2' | '3' | '4';
    forceCompare: '0' | '1';
    /** Undefined: FaceID's own judgement of a match is taken. */
    falseAcceptRate: FalseAcceptRate | undefined;
  };
  webhook: {
    /** Undefined: verdicts are only stored, never pushed. */
    url: string | undefined;
    secret: string | undefined;
    includeImage: boolean;
    maxAttempts: number;
    retryDelayMs: number;
  };
  verificationRetentionMs: number;
  corsOrigins: string[];
  metricsPort: number | undefined;
  docsEnabled: boolean;
  shutdownTimeoutMs: number;
}

/** Names every variable at fault, one per line, so ops can fix them all in one go. */
export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n${problems.map((problem) => `  - ${problem}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}

/** Outside production the pseudonyms only need to be stable, not secret. */
const DEVELOPMENT_UUID_SALT = 'development-only-uuid-salt';

export function loadConfig(source: NodeJS.ProcessEnv): Config {
  // Empty strings (as left by `VAR=` in an .env file) mean "unset".
  const present = Object.fromEntries(Object.entries(source).filter(([, value]) => value !== undefined && value !== ''));
  const parsed = envSchema.safeParse(present);
  const problems: string[] = [];
  let env: Env;
  if (parsed.success) {
    env = parsed.data;
  } else {
    problems.push(...parsed.error.issues.map((issue) => `${issue.path.join('.') || 'environment'}: ${issue.message}`));
    // Check the rest too, with the malformed values left out, so one start-up error names every problem.
    const malformed = new Set(parsed.error.issues.map((issue) => String(issue.path[0])));
    const rest = envSchema.safeParse(
      Object.fromEntries(Object.entries(present).filter(([name]) => !malformed.has(name))),
    );
    if (!rest.success) throw new ConfigError(problems);
    env = rest.data;
  }
  const production = env.NODE_ENV === 'production';

  const apiSecret = readApiSecret(env, problems);
  if (env.FACEID_API_KEY !== undefined && apiSecret === undefined) {
    problems.push('FACEID_API_SECRET: required when FACEID_API_KEY is set (or FACEID_API_SECRET_FILE)');
  }
  if (env.FACEID_API_KEY === undefined && apiSecret !== undefined) {
    problems.push('FACEID_API_KEY: required when an api_secret is set');
  }
  if (production) {
    if (!env.FACEID_BASE_URL.startsWith('https://')) problems.push('FACEID_BASE_URL: must use https in production');
    if (env.FACEID_API_KEY === undefined)
      problems.push('FACEID_API_KEY: required in production (the sandbox is for development)');
  }

  const keySources = [env.AUTH_JWT_SECRET, env.AUTH_JWT_PUBLIC_KEY, env.AUTH_JWKS_URL].filter(
    (value) => value !== undefined,
  );
  const authMode = env.AUTH_MODE ?? (keySources.length > 0 ? 'jwt' : production ? undefined : 'none');
  if (authMode === undefined) {
    problems.push('AUTH_MODE: production needs JWT auth: set AUTH_JWT_SECRET, AUTH_JWT_PUBLIC_KEY or AUTH_JWKS_URL');
  } else if (authMode === 'none' && production) {
    problems.push('AUTH_MODE: `none` is for development only and is refused in production');
  } else if (authMode === 'jwt' && keySources.length !== 1) {
    problems.push(
      keySources.length === 0
        ? 'AUTH_MODE: `jwt` needs one of AUTH_JWT_SECRET, AUTH_JWT_PUBLIC_KEY, AUTH_JWKS_URL'
        : 'AUTH_JWT_SECRET: set only one of AUTH_JWT_SECRET, AUTH_JWT_PUBLIC_KEY, AUTH_JWKS_URL',
    );
  }
  // An environment variable holds a PEM on one line, with `\n` written out.
  const publicKeyPem = env.AUTH_JWT_PUBLIC_KEY?.replace(/\\n/g, '\n');
  if (publicKeyPem !== undefined && !isPublicKey(publicKeyPem)) {
    problems.push('AUTH_JWT_PUBLIC_KEY: not a PEM public key');
  }
  if (production && env.UUID_SALT === undefined) {
    problems.push('UUID_SALT: required in production (it keeps the user ids sent to FaceID pseudonymous)');
  }
  if (env.FACEID_DAILY_BUDGET !== undefined && env.REDIS_URL === undefined && production) {
    problems.push('FACEID_DAILY_BUDGET: needs REDIS_URL in production, or every instance would have its own budget');
  }
  if (env.REDIS_URL !== undefined && !/^rediss?:\/\//.test(env.REDIS_URL)) {
    problems.push('REDIS_URL: must start with redis:// or rediss://');
  }
  if (env.WEBHOOK_URL !== undefined && env.WEBHOOK_SECRET === undefined) {
    problems.push('WEBHOOK_SECRET: required with WEBHOOK_URL (the backend must be able to check each webhook)');
  }
  if (production && env.WEBHOOK_URL !== undefined && !env.WEBHOOK_URL.startsWith('https://')) {
    problems.push('WEBHOOK_URL: must use https in production');
  }
  const trustProxy = parseTrustProxy(env.TRUST_PROXY, problems);
  if (env.METRICS_PORT !== undefined && env.METRICS_PORT === env.PORT) {
    problems.push('METRICS_PORT: must differ from PORT');
  }
  if (problems.length > 0 || authMode === undefined) throw new ConfigError(problems);

  return {
    nodeEnv: env.NODE_ENV,
    port: env.PORT,
    logLevel: env.LOG_LEVEL,
    faceid: {
      baseUrl: env.FACEID_BASE_URL.replace(/\/+$/, ''),
      credentials:
        env.FACEID_API_KEY !== undefined && apiSecret !== undefined
          ? { apiKey: env.FACEID_API_KEY, apiSecret }
          : undefined,
      timeoutMs: env.FACEID_TIMEOUT_MS,
      maxRetries: env.FACEID_MAX_RETRIES,
      maxConcurrency: env.FACEID_MAX_CONCURRENCY,
      queueTimeoutMs: env.FACEID_QUEUE_TIMEOUT_MS,
      breakerFailures: env.FACEID_BREAKER_FAILURES,
      breakerOpenMs: env.FACEID_BREAKER_OPEN_MS,
      dailyBudget: env.FACEID_DAILY_BUDGET,
    },
    uploads: { memoryBytes: env.UPLOAD_MEMORY_MB * 1024 * 1024, queueTimeoutMs: env.UPLOAD_QUEUE_TIMEOUT_MS },
    auth: {
      mode: authMode,
      jwtSecret: env.AUTH_JWT_SECRET,
      publicKeyPem,
      jwksUrl: env.AUTH_JWKS_URL,
      issuer: env.AUTH_JWT_ISSUER,
      audience: env.AUTH_JWT_AUDIENCE,
      clockToleranceSeconds: env.AUTH_CLOCK_TOLERANCE_SECONDS,
      uuidSalt: env.UUID_SALT ?? DEVELOPMENT_UUID_SALT,
    },
    redis: {
      url: env.REDIS_URL,
      keyPrefix: env.REDIS_KEY_PREFIX,
      connectTimeoutMs: env.REDIS_CONNECT_TIMEOUT_MS,
      commandTimeoutMs: env.REDIS_COMMAND_TIMEOUT_MS,
      maxReconnectDelayMs: env.REDIS_MAX_RECONNECT_DELAY_MS,
    },
    rateLimit: { max: env.RATE_LIMIT_MAX, windowSeconds: env.RATE_LIMIT_WINDOW_SECONDS },
    trustProxy,
    policy: {
      livenessTypes: env.POLICY_LIVENESS_TYPES,
      comparisonTypes: env.POLICY_COMPARISON_TYPES,
      securityLevel: env.POLICY_SECURITY_LEVEL,
      forceCompare: env.POLICY_FORCE_COMPARE,
      falseAcceptRate: env.POLICY_FALSE_ACCEPT_RATE,
    },
    webhook: {
      url: env.WEBHOOK_URL,
      secret: env.WEBHOOK_SECRET,
      includeImage: env.WEBHOOK_INCLUDE_IMAGE,
      maxAttempts: env.WEBHOOK_MAX_ATTEMPTS,
      retryDelayMs: env.WEBHOOK_RETRY_DELAY_MS,
    },
    verificationRetentionMs: env.VERIFICATION_RETENTION_HOURS * 60 * 60 * 1000,
    corsOrigins:
      env.CORS_ORIGINS?.split(',')
        .map((origin) => origin.trim())
        .filter((origin) => origin.length > 0) ?? [],
    metricsPort: env.METRICS_PORT,
    docsEnabled: env.DOCS_ENABLED,
    shutdownTimeoutMs: env.SHUTDOWN_TIMEOUT_MS,
  };
}

function isPublicKey(pem: string): boolean {
  try {
    createPublicKey(pem);
    return true;
  } catch {
    return false;
  }
}

function readApiSecret(env: Env, problems: string[]): string | undefined {
  if (env.FACEID_API_SECRET_FILE === undefined) return env.FACEID_API_SECRET;
  if (env.FACEID_API_SECRET !== undefined) {
    problems.push('FACEID_API_SECRET_FILE: set either FACEID_API_SECRET or FACEID_API_SECRET_FILE, not both');
    return undefined;
  }
  try {
    const secret = readFileSync(env.FACEID_API_SECRET_FILE, 'utf8').trim();
    if (secret.length === 0) problems.push('FACEID_API_SECRET_FILE: the file is empty');
    return secret.length > 0 ? secret : undefined;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? 'unreadable';
    problems.push(`FACEID_API_SECRET_FILE: cannot read the file (${code})`);
    return undefined;
  }
}

/** Mirrors Express's `trust proxy` values, but refuses anything it would silently misread. */
function parseTrustProxy(text: string, problems: string[]): boolean | number | string[] {
  const value = text.trim();
  if (value === 'false' || value === '') return false;
  if (value === 'true') return true;
  if (/^\d+$/.test(value)) return Number(value);
  const entries = value
    .split(',')
    .map((entry) => entry.trim())
    .filter((entry) => entry.length > 0);
  const named = new Set(['loopback', 'linklocal', 'uniquelocal']);
  const bad = entries.filter((entry) => !named.has(entry) && isIP(entry.split('/')[0] ?? '') === 0);
  if (bad.length > 0) problems.push(`TRUST_PROXY: not an address, CIDR or hop count: ${bad.join(', ')}`);
  return entries;
}
