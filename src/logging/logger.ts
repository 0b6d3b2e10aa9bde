import pino, { type DestinationStream, type Logger } from 'pino';

/**
 * Names whose values never reach a log line, wherever they sit in a logged object (down to `MAX_DEPTH`).
 * Request and response objects are never logged whole (see the request line written by
 * middleware/request-logging.ts); this is the second line of defence for anything that still carries a
 * secret under a well-known name.
 */
const SENSITIVE = ['apiSecret', 'sign', 'authorization', 'idcard_number', 'idcard_name', 'credentials', 'jwt', 'token', 'biz_token'];
const SENSITIVE_NAMES: ReadonlySet<string> = new Set(SENSITIVE.map((name) => name.toLowerCase()));
const CENSOR = '[redacted]';
/** What the start-up line already shows in a secret's place: whether it is configured, nothing more. */
const MASKED = new Set(['set', 'unset']);
const MAX_DEPTH = 4;

/**
 * A copy of `value` with every sensitive name's value censored; `value` itself when nothing needed it, so a
 * line without secrets costs a walk over its keys and no copy. Errors are left to the `err` serializer, which
 * keeps only their type, message, code and stack.
 *
 * Written here rather than with wildcard paths in pino's `redact` option: those clone every logged object,
 * which tripled the cost of the request line (about 12 µs instead of 4 per request; see BENCHMARKS.md).
 */
function redactSensitive<T>(value: T, depth = 0): T {
  if (typeof value !== 'object' || value === null || value instanceof Error || Buffer.isBuffer(value) || depth >= MAX_DEPTH) return value;
  let copy: Record<string, unknown> | unknown[] | undefined;
  const source = value as Record<string, unknown>;
  for (const key of Object.keys(source)) {
    const inner = source[key];
    const sensitive = SENSITIVE_NAMES.has(key.toLowerCase()) && inner !== undefined && !(typeof inner === 'string' && MASKED.has(inner));
    const replaced = sensitive ? CENSOR : redactSensitive(inner, depth + 1);
    if (replaced === inner) continue;
    copy ??= Array.isArray(source) ? [...(source as unknown[])] : { ...source };
    (copy as Record<string, unknown>)[key] = replaced;
  }
  return (copy ?? value) as T;
}

/** pino's levels, for the LOG_LEVEL variables of the service and the sandbox. */
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: 'faceid-token-service' },
      timestamp: pino.stdTimeFunctions.isoTime,
      // Exact top-level names cost pino next to nothing and also cover a child logger's bindings.
      redact: { paths: SENSITIVE, censor: CENSOR },
      formatters: { log: (object) => redactSensitive(object) },
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
