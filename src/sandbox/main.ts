import { z } from 'zod';
import { createLogger, LOG_LEVELS } from '../logging/logger';
import { startSandbox } from './sandbox-server';

/** The sandbox's own entry (`npm run sandbox`): a FaceID stand-in on its own port. */
const sandboxEnvSchema = z.object({
  SANDBOX_PORT: z.coerce.number().int().min(0).max(65535).default(3100).describe('Port of the sandbox.'),
  SANDBOX_HOST: z.string().default('127.0.0.1').describe('Address the sandbox listens on (0.0.0.0 in a container).'),
  SANDBOX_API_KEY: z.string().min(1).default('sandbox-api-key').describe('The api_key the sandbox accepts.'),
  SANDBOX_API_SECRET: z
    .string()
    .min(1)
    .default('sandbox-api-secret')
    .describe('The api_secret the sandbox checks signs with.'),
  SANDBOX_LATENCY_MS: z.coerce.number().int().min(0).max(120_000).default(0).describe('Delay added to every answer.'),
  SANDBOX_WEBHOOK_SECRET: z
    .string()
    .regex(/^whsec_[A-Za-z0-9+/]+={0,2}$/, 'must be whsec_ followed by base64')
    .optional()
    .describe("The service's WEBHOOK_SECRET: the webhook sink then checks each delivery's signature."),
  LOG_LEVEL: z.enum(LOG_LEVELS).default('info'),
});

async function main(): Promise<void> {
  const parsed = sandboxEnvSchema.safeParse(process.env);
  const log = createLogger(parsed.success ? parsed.data.LOG_LEVEL : 'info');
  if (!parsed.success) {
    log.fatal(
      { problems: parsed.error.issues.map((issue) => `${issue.path.join('.')}: ${issue.message}`) },
      'invalid sandbox configuration',
    );
    process.exit(1);
  }
  const env = parsed.data;
  const sandbox = await startSandbox({
    apiKey: env.SANDBOX_API_KEY,
    apiSecret: env.SANDBOX_API_SECRET,
    port: env.SANDBOX_PORT,
    host: env.SANDBOX_HOST,
    latencyMs: env.SANDBOX_LATENCY_MS,
    log,
    webhookSecret: env.SANDBOX_WEBHOOK_SECRET,
  });
  log.warn(
    { url: sandbox.url, webhooks: `${sandbox.url}/sandbox/webhooks` },
    'FaceID SANDBOX listening: it issues fake biz_tokens that no FaceID SDK accepts',
  );
  const stop = (): void => {
    sandbox.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

void main();
