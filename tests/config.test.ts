import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, loadConfig } from '../src/config/load-config';

/** Unit tests of loadConfig: defaults, every refusal naming its variable, and the production rules. */

type Env = Record<string, string | undefined>;

/** The problems of a configuration that must not load. */
function problemsOf(env: Env): string[] {
  let thrown: unknown;
  try {
    loadConfig(env);
  } catch (error) {
    thrown = error;
  }
  expect(thrown).toBeInstanceOf(ConfigError);
  const problems = (thrown as ConfigError).problems;
  expect(problems.length).toBeGreaterThan(0);
  return problems;
}

/** A problem line that starts with the variable's name (`VAR: ...` or `VAR.0: ...`). */
const naming = (variable: string): RegExp => new RegExp(`^${variable}(\\.\\d+)?: \\S`);

function expectProblemFor(env: Env, variable: string): string[] {
  const problems = problemsOf(env);
  expect(problems).toEqual(expect.arrayContaining([expect.stringMatching(naming(variable))]));
  return problems;
}

const HS_SECRET = 'a-production-jwt-secret-of-32-chars+';
const PRODUCTION: Env = {
  NODE_ENV: 'production',
  FACEID_API_KEY: 'prod-key',
  FACEID_API_SECRET: 'prod-secret',
  AUTH_JWT_SECRET: HS_SECRET,
  UUID_SALT: 'a-production-uuid-salt',
};

const PEM = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  .publicKey.export({ type: 'spki', format: 'pem' })
  .toString()
  .trim();

describe('loadConfig defaults', () => {
  test('when nothing is set, then the documented defaults apply and the sandbox is used without auth', () => {
    const config = loadConfig({});
    expect(config.nodeEnv).toBe('development');
    expect(config.port).toBe(3000);
    expect(config.logLevel).toBe('info');
    expect(config.faceid).toEqual({
      baseUrl: 'https://api.megvii.com',
      credentials: undefined,
      timeoutMs: 10_000,
      maxRetries: 2,
      maxConcurrency: 32,
      queueTimeoutMs: 2_000,
      breakerFailures: 5,
      breakerOpenMs: 10_000,
      dailyBudget: undefined,
    });
    expect(config.uploads).toEqual({ memoryBytes: 32 * 1024 * 1024, queueTimeoutMs: 10_000 });
    expect(config.rateLimit).toEqual({ max: 5, windowSeconds: 60 });
    expect(config.policy).toEqual({
      livenessTypes: ['meglive', 'still', 'raw_image'],
      comparisonTypes: ['0', '1'],
      securityLevel: '2',
      forceCompare: '0',
    });
    expect(config.auth.mode).toBe('none');
    expect(config.auth.jwtSecret).toBeUndefined();
    expect(config.auth.publicKeyPem).toBeUndefined();
    expect(config.auth.jwksUrl).toBeUndefined();
    expect(config.auth.clockToleranceSeconds).toBe(5);
    expect(config.redis.url).toBeUndefined();
    expect(config.trustProxy).toBe(false);
    expect(config.metricsPort).toBeUndefined();
    expect(config.corsOrigins).toEqual([]);
  });

  test('when only a key source is set outside production, then auth mode is jwt', () => {
    expect(loadConfig({ AUTH_JWT_SECRET: HS_SECRET }).auth.mode).toBe('jwt');
    expect(loadConfig({ AUTH_JWKS_URL: 'https://idp.example.test/jwks.json' }).auth.mode).toBe('jwt');
  });

  test('when a key and secret are set, then they become the FaceID credentials', () => {
    expect(loadConfig({ FACEID_API_KEY: 'k', FACEID_API_SECRET: 's' }).faceid.credentials).toEqual({
      apiKey: 'k',
      apiSecret: 's',
    });
  });

  test('when the policy variables are set, then they are parsed as lists and levels', () => {
    const config = loadConfig({
      POLICY_LIVENESS_TYPES: ' still , meglive ',
      POLICY_COMPARISON_TYPES: '1',
      POLICY_SECURITY_LEVEL: '4',
      POLICY_FORCE_COMPARE: '1',
    });
    expect(config.policy).toEqual({
      livenessTypes: ['still', 'meglive'],
      comparisonTypes: ['1'],
      securityLevel: '4',
      forceCompare: '1',
    });
  });

  test('when empty-string variables are set (VAR= in an .env file), then they count as unset', () => {
    const config = loadConfig({
      PORT: '',
      LOG_LEVEL: '',
      FACEID_BASE_URL: '',
      FACEID_API_KEY: '',
      FACEID_API_SECRET: '',
      FACEID_API_SECRET_FILE: '',
      AUTH_JWT_SECRET: '',
      AUTH_JWT_PUBLIC_KEY: '',
      AUTH_JWKS_URL: '',
      REDIS_URL: '',
      POLICY_COMPARISON_TYPES: '',
      METRICS_PORT: '',
    });
    expect(config.port).toBe(3000);
    expect(config.logLevel).toBe('info');
    expect(config.faceid.baseUrl).toBe('https://api.megvii.com');
    expect(config.faceid.credentials).toBeUndefined();
    expect(config.auth.mode).toBe('none');
    expect(config.redis.url).toBeUndefined();
    expect(config.policy.comparisonTypes).toEqual(['0', '1']);
    expect(config.metricsPort).toBeUndefined();
  });

  test('when AUTH_JWT_PUBLIC_KEY holds literal \\n escapes, then they become newlines', () => {
    const config = loadConfig({ AUTH_JWT_PUBLIC_KEY: PEM.replace(/\n/g, '\\n') });
    expect(config.auth.mode).toBe('jwt');
    expect(config.auth.publicKeyPem).toBe(PEM);
    expect(config.auth.publicKeyPem).not.toContain('\\n');
  });

  test('when TRUST_PROXY names addresses, then they are a list; a hop count is a number', () => {
    expect(loadConfig({ TRUST_PROXY: 'loopback, 10.0.0.0/8' }).trustProxy).toEqual(['loopback', '10.0.0.0/8']);
    expect(loadConfig({ TRUST_PROXY: '1' }).trustProxy).toBe(1);
    expect(loadConfig({ TRUST_PROXY: 'true' }).trustProxy).toBe(true);
  });
});

describe('loadConfig refuses bad values, naming the variable', () => {
  test.each(
    (
      [
        ['PORT', { PORT: 'abc' }],
        ['PORT', { PORT: '70000' }],
        ['FACEID_TIMEOUT_MS', { FACEID_TIMEOUT_MS: '5' }],
        ['FACEID_MAX_RETRIES', { FACEID_MAX_RETRIES: '-1' }],
        ['RATE_LIMIT_MAX', { RATE_LIMIT_MAX: '0' }],
        ['RATE_LIMIT_WINDOW_SECONDS', { RATE_LIMIT_WINDOW_SECONDS: '1.5' }],
        ['POLICY_LIVENESS_TYPES', { POLICY_LIVENESS_TYPES: 'foo' }],
        ['POLICY_LIVENESS_TYPES', { POLICY_LIVENESS_TYPES: 'meglive,foo' }],
        ['POLICY_COMPARISON_TYPES', { POLICY_COMPARISON_TYPES: ' , ' }],
        ['POLICY_COMPARISON_TYPES', { POLICY_COMPARISON_TYPES: '2' }],
        ['POLICY_SECURITY_LEVEL', { POLICY_SECURITY_LEVEL: '5' }],
        ['POLICY_FORCE_COMPARE', { POLICY_FORCE_COMPARE: 'yes' }],
        ['FACEID_BASE_URL', { FACEID_BASE_URL: 'ftp://x' }],
        ['FACEID_BASE_URL', { FACEID_BASE_URL: 'not a url' }],
        ['FACEID_BASE_URL', { FACEID_BASE_URL: 'https://user:secret@api.megvii.com' }],
        ['LOG_LEVEL', { LOG_LEVEL: 'loud' }],
        ['TRUST_PROXY', { TRUST_PROXY: 'not-an-ip' }],
        ['TRUST_PROXY', { TRUST_PROXY: 'loopback,10.0.0.300' }],
        ['REDIS_URL', { REDIS_URL: 'http://x' }],
        ['AUTH_JWT_SECRET', { AUTH_JWT_SECRET: 'too-short' }],
        ['AUTH_JWKS_URL', { AUTH_JWKS_URL: 'ftp://idp.example.test/jwks' }],
        ['UUID_SALT', { UUID_SALT: 'short' }],
        ['METRICS_PORT', { METRICS_PORT: '3000' }],
        ['METRICS_PORT', { PORT: '8080', METRICS_PORT: '8080' }],
        ['NODE_ENV', { NODE_ENV: 'staging' }],
        ['AUTH_MODE', { AUTH_MODE: 'basic' }],
      ] as Array<[string, Env]>
    ).map(([variable, env]) => [env, variable] as [Env, string]),
  )('when the environment is %j, then a problem names %s', (env, variable) => {
    expectProblemFor(env, variable);
  });

  test('when the values are fine, then the same variables load (the refusals above are about the values)', () => {
    const config = loadConfig({
      PORT: '8080',
      METRICS_PORT: '9100',
      REDIS_URL: 'rediss://cache.internal:6380',
      TRUST_PROXY: '10.1.2.3',
    });
    expect(config.port).toBe(8080);
    expect(config.metricsPort).toBe(9100);
    expect(config.redis.url).toBe('rediss://cache.internal:6380');
    expect(config.trustProxy).toEqual(['10.1.2.3']);
  });

  test('when several values are bad, then every one is reported at once', () => {
    const problems = problemsOf({ PORT: 'abc', LOG_LEVEL: 'loud', RATE_LIMIT_MAX: '0', POLICY_SECURITY_LEVEL: '5' });
    for (const variable of ['PORT', 'LOG_LEVEL', 'RATE_LIMIT_MAX', 'POLICY_SECURITY_LEVEL']) {
      expect(problems).toEqual(expect.arrayContaining([expect.stringMatching(naming(variable))]));
    }
  });

  test('when cross-variable problems come together, then every one is reported at once', () => {
    const problems = problemsOf({
      TRUST_PROXY: 'not-an-ip',
      REDIS_URL: 'http://x',
      METRICS_PORT: '3000',
      FACEID_API_KEY: 'k',
    });
    for (const variable of ['TRUST_PROXY', 'REDIS_URL', 'METRICS_PORT', 'FACEID_API_SECRET']) {
      expect(problems).toEqual(expect.arrayContaining([expect.stringMatching(naming(variable))]));
    }
  });

  test('when a malformed value and a cross-variable problem come together, then both are reported at once', () => {
    const problems = problemsOf({ PORT: 'abc', TRUST_PROXY: 'not-an-ip', REDIS_URL: 'http://x' });
    for (const variable of ['PORT', 'TRUST_PROXY', 'REDIS_URL']) {
      expect(problems).toEqual(expect.arrayContaining([expect.stringMatching(naming(variable))]));
    }
  });

  test('when the error is shown, then its message lists every problem', () => {
    let message = '';
    try {
      loadConfig({ PORT: 'abc', LOG_LEVEL: 'loud' });
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toMatch(/PORT/);
    expect(message).toMatch(/LOG_LEVEL/);
  });
});

describe('loadConfig FaceID credentials', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'faceid-config-test-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  test('when FACEID_API_SECRET_FILE holds the secret with a trailing newline, then the trimmed secret is used', () => {
    const file = join(dir, 'secret');
    writeFileSync(file, 'file-held-secret\n');
    const config = loadConfig({ FACEID_API_KEY: 'k', FACEID_API_SECRET_FILE: file });
    expect(config.faceid.credentials).toEqual({ apiKey: 'k', apiSecret: 'file-held-secret' });
  });

  test('when FACEID_API_SECRET_FILE names a missing file, then a problem names it', () => {
    const problems = expectProblemFor(
      { FACEID_API_KEY: 'k', FACEID_API_SECRET_FILE: join(dir, 'missing') },
      'FACEID_API_SECRET_FILE',
    );
    expect(problems.join('\n')).toMatch(/ENOENT/);
  });

  test('when FACEID_API_SECRET_FILE is empty or only whitespace, then a problem names it', () => {
    const empty = join(dir, 'empty');
    writeFileSync(empty, '');
    expectProblemFor({ FACEID_API_KEY: 'k', FACEID_API_SECRET_FILE: empty }, 'FACEID_API_SECRET_FILE');
    const blank = join(dir, 'blank');
    writeFileSync(blank, ' \n\n');
    expectProblemFor({ FACEID_API_KEY: 'k', FACEID_API_SECRET_FILE: blank }, 'FACEID_API_SECRET_FILE');
  });

  test('when both FACEID_API_SECRET and FACEID_API_SECRET_FILE are set, then it is refused', () => {
    const file = join(dir, 'both');
    writeFileSync(file, 'file-held-secret\n');
    expectProblemFor(
      { FACEID_API_KEY: 'k', FACEID_API_SECRET: 's', FACEID_API_SECRET_FILE: file },
      'FACEID_API_SECRET_FILE',
    );
  });

  test('when a key is set without a secret, then FACEID_API_SECRET is named', () => {
    expectProblemFor({ FACEID_API_KEY: 'k' }, 'FACEID_API_SECRET');
  });

  test('when a secret is set without a key, then FACEID_API_KEY is named', () => {
    expectProblemFor({ FACEID_API_SECRET: 's' }, 'FACEID_API_KEY');
  });

  test('when a configuration holding secrets is refused, then no problem line repeats a secret value', () => {
    const problems = problemsOf({
      FACEID_API_SECRET: 'very-secret-value-123',
      AUTH_JWT_SECRET: 'short-jwt-secret-xyz',
    });
    expect(problems).toEqual(expect.arrayContaining([expect.stringMatching(naming('AUTH_JWT_SECRET'))]));
    expect(problems.join('\n')).not.toContain('very-secret-value-123');
    expect(problems.join('\n')).not.toContain('short-jwt-secret-xyz');
  });
});

describe('loadConfig auth key sources', () => {
  test('when two key sources are set at once, then it is refused naming them', () => {
    const problems = problemsOf({ AUTH_JWT_SECRET: HS_SECRET, AUTH_JWT_PUBLIC_KEY: PEM });
    const line = problems.find((problem) => /^AUTH_/.test(problem));
    expect(line).toBeDefined();
    expect(line).toMatch(/AUTH_JWT_SECRET/);
    expect(line).toMatch(/AUTH_JWT_PUBLIC_KEY/);
    expectProblemFor(
      { AUTH_JWT_PUBLIC_KEY: PEM, AUTH_JWKS_URL: 'https://idp.example.test/jwks.json' },
      '(AUTH_JWT_SECRET|AUTH_JWT_PUBLIC_KEY|AUTH_JWKS_URL|AUTH_MODE)',
    );
  });

  test('when AUTH_JWT_PUBLIC_KEY is not a PEM public key, then it is named at load, not at the first request', () => {
    expectProblemFor(
      { AUTH_JWT_PUBLIC_KEY: '-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----' },
      'AUTH_JWT_PUBLIC_KEY',
    );
  });

  test('when AUTH_MODE=jwt is set without a key source, then AUTH_MODE is named', () => {
    expectProblemFor({ AUTH_MODE: 'jwt' }, 'AUTH_MODE');
  });

  test('when AUTH_MODE=none is set outside production, then it loads without auth', () => {
    expect(loadConfig({ AUTH_MODE: 'none', NODE_ENV: 'development' }).auth.mode).toBe('none');
  });
});

describe('loadConfig in production', () => {
  const without = (...names: string[]): Env =>
    Object.fromEntries(Object.entries(PRODUCTION).filter(([name]) => !names.includes(name)));

  test('when the production configuration is complete, then it loads with JWT auth, real credentials and the salt', () => {
    const config = loadConfig(PRODUCTION);
    expect(config.nodeEnv).toBe('production');
    expect(config.faceid.baseUrl).toBe('https://api.megvii.com');
    expect(config.faceid.credentials).toEqual({ apiKey: 'prod-key', apiSecret: 'prod-secret' });
    expect(config.auth.mode).toBe('jwt');
    expect(config.auth.jwtSecret).toBe(HS_SECRET);
    expect(config.auth.uuidSalt).toBe('a-production-uuid-salt');
  });

  test('when the production configuration uses a public key, a regional https host and Redis with a budget, then it loads', () => {
    const config = loadConfig({
      ...without('AUTH_JWT_SECRET'),
      AUTH_JWT_PUBLIC_KEY: PEM,
      FACEID_BASE_URL: 'https://api-sgp.megvii.com/',
      REDIS_URL: 'redis://redis:6379',
      FACEID_DAILY_BUDGET: '1000',
    });
    expect(config.auth.mode).toBe('jwt');
    expect(config.faceid.baseUrl).toBe('https://api-sgp.megvii.com');
    expect(config.faceid.dailyBudget).toBe(1000);
  });

  test('when the FaceID base URL is http, then FACEID_BASE_URL is refused', () => {
    expectProblemFor({ ...PRODUCTION, FACEID_BASE_URL: 'http://api.megvii.com' }, 'FACEID_BASE_URL');
  });

  test('when the FaceID key and secret are missing, then FACEID_API_KEY is refused', () => {
    expectProblemFor(without('FACEID_API_KEY', 'FACEID_API_SECRET'), 'FACEID_API_KEY');
  });

  test('when AUTH_MODE=none, then AUTH_MODE is refused', () => {
    expectProblemFor({ ...PRODUCTION, AUTH_MODE: 'none' }, 'AUTH_MODE');
    expectProblemFor({ ...without('AUTH_JWT_SECRET'), AUTH_MODE: 'none' }, 'AUTH_MODE');
  });

  test('when no auth key source is set, then AUTH_MODE is refused', () => {
    expectProblemFor(without('AUTH_JWT_SECRET'), 'AUTH_MODE');
  });

  test('when UUID_SALT is missing, then UUID_SALT is refused', () => {
    expectProblemFor(without('UUID_SALT'), 'UUID_SALT');
  });

  test('when FACEID_DAILY_BUDGET is set without REDIS_URL, then FACEID_DAILY_BUDGET is refused', () => {
    expectProblemFor({ ...PRODUCTION, FACEID_DAILY_BUDGET: '1000' }, 'FACEID_DAILY_BUDGET');
    // Outside production a per-process budget is allowed.
    expect(loadConfig({ FACEID_DAILY_BUDGET: '1000' }).faceid.dailyBudget).toBe(1000);
  });

  test('when everything production needs is missing, then every refusal is reported at once', () => {
    const problems = problemsOf({ NODE_ENV: 'production', FACEID_BASE_URL: 'http://faceid.internal' });
    for (const variable of ['FACEID_BASE_URL', 'FACEID_API_KEY', 'AUTH_MODE', 'UUID_SALT']) {
      expect(problems).toEqual(expect.arrayContaining([expect.stringMatching(naming(variable))]));
    }
  });
});
