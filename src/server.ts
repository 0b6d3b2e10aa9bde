import http from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import type { Logger } from 'pino';
import { createService } from './app';
import { type Config, ConfigError, loadConfig } from './config/load-config';
import { createLogger, maskSecret } from './logging/logger';
import { metricsHandler } from './routes/ops';
import { resolveUpstream } from './sandbox/embedded-sandbox';

/**
 * Explicit limits against slow clients: the headers must arrive within 15 s, the whole request (up to
 * 20 MB from a phone) within 120 s, and an idle keep-alive socket lives just past common load balancers' 60 s.
 */
export const SERVER_TIMEOUTS = {
  headersTimeoutMs: 15_000,
  requestTimeoutMs: 120_000,
  keepAliveTimeoutMs: 65_000,
} as const;

/** Node checks the timeouts above only every 30 s by default; once a second keeps them close to their values. */
const SERVER_OPTIONS: http.ServerOptions = { connectionsCheckingInterval: 1_000 };

export interface RunningServer {
  port: number;
  metricsPort: number | undefined;
  stop: () => Promise<void>;
}

/** Starts the service: config, upstream (real or sandbox), app, listeners, and the SIGTERM path. */
export async function startServer(config: Config, log: Logger): Promise<RunningServer> {
  const upstream = await resolveUpstream(config, log);
  const service = createService(upstream.config, upstream.credentials, log);
  const server = applyTimeouts(http.createServer(SERVER_OPTIONS, service.app));
  await listen(server, config.port);
  let metricsServer: http.Server | undefined;
  if (config.metricsPort !== undefined) {
    const metricsApp = express();
    metricsApp.disable('x-powered-by');
    metricsApp.get('/metrics', metricsHandler(service.metrics));
    metricsServer = applyTimeouts(http.createServer(SERVER_OPTIONS, metricsApp));
    await listen(metricsServer, config.metricsPort);
  }
  const port = (server.address() as AddressInfo).port;
  log.info(
    { port, metricsPort: config.metricsPort, config: maskedConfig(upstream.config) },
    'faceid-token-service listening',
  );

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      service.beginShutdown();
      log.info({ timeoutMs: config.shutdownTimeoutMs }, 'shutting down: finishing in-flight requests');
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // Keep-alive sockets outlive server.close(): each one is closed as soon as its last answer is out
      // (new answers say `Connection: close`, see app.ts), so a pooled client cannot keep the drain open.
      server.closeIdleConnections();
      const sweep = setInterval(() => server.closeIdleConnections(), 100);
      const timer = setTimeout(() => {
        log.warn('shutdown timeout: closing the connections still open');
        server.closeAllConnections();
      }, config.shutdownTimeoutMs);
      await closed;
      clearInterval(sweep);
      clearTimeout(timer);
      metricsServer?.closeAllConnections();
      await new Promise<void>((resolve) =>
        metricsServer === undefined ? resolve() : metricsServer.close(() => resolve()),
      );
      await service.close();
      await upstream.close();
      log.info('stopped');
    })();
    return stopping;
  };
  return {
    port,
    metricsPort: metricsServer === undefined ? undefined : (metricsServer.address() as AddressInfo).port,
    stop,
  };
}

function applyTimeouts(server: http.Server): http.Server {
  server.headersTimeout = SERVER_TIMEOUTS.headersTimeoutMs;
  server.requestTimeout = SERVER_TIMEOUTS.requestTimeoutMs;
  server.keepAliveTimeout = SERVER_TIMEOUTS.keepAliveTimeoutMs;
  return server;
}

function listen(server: http.Server, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/** The effective configuration for the start-up log line: every secret replaced by whether it is set, the api_key cut to its start. */
function maskedConfig(config: Config): Record<string, unknown> {
  const { credentials, ...faceid } = config.faceid;
  const { jwtSecret, publicKeyPem, uuidSalt, ...auth } = config.auth;
  return {
    ...config,
    faceid: {
      ...faceid,
      apiKey: credentials === undefined ? maskSecret(undefined) : `${credentials.apiKey.slice(0, 4)}…`,
      apiSecret: maskSecret(credentials),
    },
    auth: {
      ...auth,
      jwtSecret: maskSecret(jwtSecret),
      publicKey: maskSecret(publicKeyPem),
      uuidSalt: maskSecret(uuidSalt),
    },
    redis: { ...config.redis, url: config.redis.url?.replace(/\/\/[^@/]*@/, '//***@') },
  };
}

async function main(): Promise<void> {
  const bootLog = createLogger('info');
  let config: Config;
  try {
    config = loadConfig(process.env);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    bootLog.fatal({ problems: error.problems }, 'invalid configuration; not starting');
    process.exitCode = 1;
    return;
  }
  const log = createLogger(config.logLevel);
  // Listening for signals before starting: a SIGTERM during start-up waits for it, then stops cleanly.
  const starting = startServer(config, log).catch((error: unknown) => {
    // A port in use, a key the config could not vet: one fatal line, not an unhandled rejection.
    if (error instanceof ConfigError) log.fatal({ problems: error.problems }, 'invalid configuration; not starting');
    else log.fatal({ err: error }, 'could not start');
    return process.exit(1);
  });
  const onSignal = (signal: NodeJS.Signals): void => {
    log.info({ signal }, 'signal received');
    starting
      .then((running) => running.stop())
      .then(
        () => process.exit(0),
        (error: unknown) => {
          log.error({ err: error }, 'shutdown failed');
          process.exit(1);
        },
      );
  };
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  await starting;
}

if (require.main === module) void main();
