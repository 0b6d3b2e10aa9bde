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
export async function resolveUpstream(config: Config, log: Logger): Promise<Upstream> {
  if (config.faceid.credentials !== undefined) {
    return { config, credentials: config.faceid.credentials, close: async () => undefined };
  }
  const credentials = {
    apiKey: `sandbox-${randomBytes(8).toString('hex')}`,
    apiSecret: randomBytes(24).toString('base64'),
  };
  const sandbox = await startSandbox({
    ...credentials,
    port: 0,
    host: '127.0.0.1',
    latencyMs: 0,
    log: log.child({ component: 'sandbox' }),
  });
  log.warn(
    { sandbox: sandbox.url },
    'NO FACEID KEY CONFIGURED: using the built-in FaceID SANDBOX. Its biz_tokens are fake; set FACEID_API_KEY and FACEID_API_SECRET for real ones',
  );
  return {
    config: { ...config, faceid: { ...config.faceid, baseUrl: sandbox.url } },
    credentials,
    close: () => sandbox.close(),
  };
}
