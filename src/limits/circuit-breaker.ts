import type { Logger } from 'pino';
import { AppError } from '../errors/app-error';

export type BreakerState = 'closed' | 'open' | 'half-open';

/**
 * Stops calling FaceID after repeated failures (timeouts, 5xx, lost connections) so that a sick upstream
 * is not hammered and callers get a fast 503 with Retry-After instead of a slow timeout. After `openMs` one
 * probe goes through: its success closes the breaker, its failure opens it again. Client errors such as
 * NO_FACE_FOUND are answers from a healthy FaceID and count as success (see verdictOf).
 *
 * Written here rather than taken from opossum: its current major needs Node 22, and its rolling
 * percentage window is more than this one rule needs.
 */
export interface CircuitBreaker {
  run<T>(call: () => Promise<T>): Promise<T>;
  state(): BreakerState;
}

export interface CircuitBreakerOptions {
  failureThreshold: number;
  openMs: number;
  log: Logger;
  now?: () => number;
}

type Verdict = 'failure' | 'healthy' | 'no-verdict';

/**
 * FaceID failing: timeouts, 5xx, lost connections. FaceID answering (a token, a client error, even a
 * refusal of the service's credentials, which must stay a 502) is healthy. A busy answer, from FaceID or
 * from the service's own budget, says nothing either way.
 */
function verdictOf(error: unknown): Verdict {
  if (!(error instanceof AppError)) return 'failure';
  if (error.code === 'UPSTREAM_ERROR' || error.code === 'UPSTREAM_TIMEOUT') return 'failure';
  return error.code === 'UPSTREAM_BUSY' ? 'no-verdict' : 'healthy';
}

export function createCircuitBreaker(options: CircuitBreakerOptions): CircuitBreaker {
  const now = options.now ?? Date.now;
  let state: BreakerState = 'closed';
  let consecutiveFailures = 0;
  let openedAt = 0;
  let probing = false;

  const moveTo = (next: BreakerState): void => {
    if (next === state) return;
    state = next;
    if (next === 'open') openedAt = now();
    const message = {
      closed: 'FaceID circuit closed: calls flow again',
      open: 'FaceID circuit OPEN: failing fast after repeated upstream failures',
      'half-open': 'FaceID circuit half-open: probing with one call',
    }[next];
    if (next === 'open') options.log.warn({ consecutiveFailures, openMs: options.openMs }, message);
    else options.log.info(message);
  };
  const rejectFast = (): AppError =>
    new AppError(
      503,
      'UPSTREAM_BUSY',
      'FaceID is failing; the service stops calling it for a moment; try again shortly',
      {
        retryAfterSeconds: Math.max(1, Math.ceil((openedAt + options.openMs - now()) / 1000)),
        logContext: { reason: 'circuit open' },
      },
    );

  return {
    state: () => state,
    async run(call) {
      if (state === 'open' && now() - openedAt >= options.openMs) moveTo('half-open');
      if (state === 'open' || (state === 'half-open' && probing)) throw rejectFast();
      const probe = state === 'half-open';
      probing = probe;
      try {
        const result = await call();
        consecutiveFailures = 0;
        moveTo('closed');
        return result;
      } catch (error) {
        const verdict = verdictOf(error);
        if (verdict === 'healthy') {
          consecutiveFailures = 0;
          moveTo('closed');
        } else if (verdict === 'failure') {
          consecutiveFailures += 1;
          if (probe || consecutiveFailures >= options.failureThreshold) moveTo('open');
        }
        throw error;
      } finally {
        if (probe) probing = false;
      }
    },
  };
}
