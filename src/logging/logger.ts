import pino, { type DestinationStream, type Logger } from 'pino';

/**
 * Names whose values never reach a log line, wherever they sit in a logged object (down to `MAX_DEPTH`).
 * Request and response objects are never logged whole (see the request line built in
 * middleware/request-logger.ts); this is the second line of defence for anything that still carries a
 * secret under a well-known name.
 */
const SENSITIVE = [
  'apiSecret',
  'sign',
  'authorization',
  'idcard_number',
  'idcard_name',
  'credentials',
  'jwt',
  'token',
  'biz_token',
];
const SENSITIVE_NAMES: ReadonlySet<string> = new Set(SENSITIVE.map((name) => name.toLowerCase()));
const CENSOR = '[redacted]';
/** What a secret becomes in the start-up line: whether it is configured, nothing more. Passes redaction. */
export const maskSecret = (secret: unknown): 'set' | 'unset' => (secret === undefined ? 'unset' : 'set');
const MASKED: ReadonlySet<unknown> = new Set([maskSecret('configured'), maskSecret(undefined)]);
const MAX_DEPTH = 4;
/** Top-level names whose serializer alone decides what is written: the walk below leaves them to it. */
const SERIALIZED: ReadonlySet<string> = new Set(['err', 'req']);
/**
 * Requests are never logged whole. pino-http binds the request to a child logger it builds on every request,
 * even with both of its loggers quiet (middleware/request-logger.ts): without this serializer that child
 * serialized the whole IncomingMessage (socket, parser, headers) into a 5 KB string on every request, after
 * the walk below had gone four levels into it (about 0.1 to 0.25 CPU-ms per request under load).
 */
const omitRequest = (): undefined => undefined;

/**
 * A copy of `value` with every sensitive name's value censored; `value` itself when nothing needed it, so a
 * line without secrets costs a walk over its keys and no copy. An object with `toJSON` is walked as it would be
 * written. A top-level `err` is left to its serializer, which keeps only type, message, code and stack (and a
 * top-level `req` to its, which drops it); an error anywhere else is written as its own properties, so it is
 * walked like any object.
 *
 * Written here rather than with wildcard paths in pino's `redact` option: those name keys in one letter case at
 * fixed depths, and clone every logged object even when nothing in it is sensitive.
 */
function redactSensitive(value: unknown, depth = 0): unknown {
  if (typeof value !== 'object' || value === null || Buffer.isBuffer(value) || depth >= MAX_DEPTH) return value;
  const written: unknown =
    typeof (value as { toJSON?: unknown }).toJSON === 'function'
      ? (value as { toJSON: () => unknown }).toJSON()
      : value;
  if (written !== value) return redactSensitive(written, depth);
  let copy: Record<string, unknown> | unknown[] | undefined;
  const source = value as Record<string, unknown>;
  for (const key of Object.keys(source)) {
    if (depth === 0 && SERIALIZED.has(key)) continue;
    const inner = source[key];
    const sensitive = SENSITIVE_NAMES.has(key.toLowerCase()) && inner !== undefined && !MASKED.has(inner);
    const replaced = sensitive ? CENSOR : redactSensitive(inner, depth + 1);
    if (replaced === inner) continue;
    copy ??= Array.isArray(source) ? [...(source as unknown[])] : { ...source };
    (copy as Record<string, unknown>)[key] = replaced;
  }
  return copy ?? value;
}

/** pino's levels, for the LOG_LEVEL variables of the service and the sandbox. */
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

export function createLogger(level: string, destination?: DestinationStream): Logger {
  const logger = pino(
    {
      level,
      base: { service: 'faceid-token-service' },
      timestamp: pino.stdTimeFunctions.isoTime,
      // Exact top-level names cost pino next to nothing and also cover a child logger's bindings.
      redact: { paths: SENSITIVE, censor: CENSOR },
      formatters: { log: (object) => redactSensitive(object) as Record<string, unknown> },
      serializers: { err: serializeError, req: omitRequest },
    },
    destination,
  );
  // pino gives a child's bindings to no formatter: they take the same walk on their way in. Every child
  // inherits this from the root, children of children included.
  const pinoChild = logger.child;
  logger.child = function childWithRedactedBindings(this: Logger, bindings, options) {
    return pinoChild.call(this, redactSensitive(bindings) as typeof bindings, options);
  } as Logger['child'];
  return logger;
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
