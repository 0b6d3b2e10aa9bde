import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { Config, FaceIdCredentials } from '../config/load-config';
import { startSandbox } from './sandbox-server';

export interface Upstream {
  config: Config;
  credentials: FaceIdCredentials;
  /** Stops the embedded sandbox, if one was started. */
  close: () => Promise<void>;
}

/**
 * The real FaceID when a key is configured; otherwise (never in production, the config refuses it) a
 * sandbox on a private loopback port with throw-away credentials, announced loudly in the log.
 */
/** Where the embedded sandbox listens in development. @see README (Verifying the user) */
const DEVELOPMENT_SANDBOX_PORT = 3001;
const SANDBOX_WARNING =
  'NO FACEID KEY CONFIGURED: using the built-in FaceID SANDBOX. Its biz_tokens are fake; ' +
  'set FACEID_API_KEY and FACEID_API_SECRET for real ones';

export async function resolveUpstream(config: Config, log: Logger): Promise<Upstream> {
  if (config.faceid.credentials !== undefined) {
    return { config, credentials: config.faceid.credentials, close: async () => undefined };
  }
  const credentials = {
    apiKey: `sandbox-${randomBytes(8).toString('hex')}`,
    apiSecret: randomBytes(24).toString('base64'),
  };
  // Without a backend of its own, a developer sees the webhooks in the sandbox's sink, signed with a throw-away key.
  const sinkSecret = config.webhook.url === undefined ? `whsec_${randomBytes(24).toString('base64')}` : undefined;
  const sandbox = await startSandbox({
    ...credentials,
    // A fixed place in development, so the README's curl walk-through can reach its helpers; private elsewhere.
    port: config.nodeEnv === 'development' ? DEVELOPMENT_SANDBOX_PORT : 0,
    webhookSecret: sinkSecret,
    host: '127.0.0.1',
    latencyMs: 0,
    log: log.child({ component: 'sandbox' }),
  });
  log.warn({ sandbox: sandbox.url }, SANDBOX_WARNING);
  const webhook =
    sinkSecret === undefined
      ? config.webhook
      : { ...config.webhook, url: `${sandbox.url}/sandbox/webhooks`, secret: sinkSecret };
  return {
    config: { ...config, faceid: { ...config.faceid, baseUrl: sandbox.url }, webhook },
    credentials,
    close: () => sandbox.close(),
  };
}
