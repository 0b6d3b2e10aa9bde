import pino, { type DestinationStream, type Logger } from 'pino';

/**
 * The service's logger. Request and response objects are never logged whole (see the request line written by
 * middleware/request-logging.ts); this redaction is the second line of defence for anything
 * that still carries a secret under a well-known name.
 */
const REDACTED_PATHS = [
  'apiSecret',
  '*.apiSecret',
  'sign',
  '*.sign',
  'authorization',
  '*.authorization',
  '*.headers.authorization',
  'idcard_number',
  '*.idcard_number',
  'idcard_name',
  '*.idcard_name',
  'credentials',
  '*.credentials',
];

/** pino's levels, for the LOG_LEVEL variables of the service and the sandbox. */
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: 'faceid-token-service' },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
      serializers: { err: serializeError },
    },
    destination,
  );
}

/**
 * Library errors can carry whole requests: an HTTP client error may hold the request body (with the sign and the
 * photos) and headers. Only the facts that help an operator survive.
 */
function serializeError(error: unknown): Record<string, unknown> {
  if (!(error instanceof Error)) return { message: typeof error === 'string' ? error : 'non-error thrown' };
  const { code, status } = error as Error & { code?: unknown; status?: unknown };
  return {
    type: error.name,
    message: error.message.slice(0, 300),
    ...(typeof code === 'string' || typeof code === 'number' ? { code } : {}),
    ...(typeof status === 'number' ? { status } : {}),
    ...(error.stack === undefined ? {} : { stack: error.stack.split('\n').slice(0, 8).join('\n') }),
  };
}
