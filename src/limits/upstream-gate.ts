import { AppError } from '../errors/app-error';

/**
 * Keeps FaceID calls within the account's concurrency: at most `maxConcurrency` in flight, the rest wait
 * in a bounded queue for at most `queueTimeoutMs` and then get 503 UPSTREAM_BUSY.
 */
export interface UpstreamGate {
  run<T>(call: () => Promise<T>): Promise<T>;
  /** Calls in flight and waiting, for metrics. */
  load(): { inFlight: number; queued: number };
}

/** Waiting longer than this many calls deep would only turn into timeouts. */
const QUEUE_DEPTH_PER_SLOT = 4;
const RETRY_AFTER_SECONDS = 1;

interface Waiter {
  grant: () => void;
  timer: NodeJS.Timeout;
}

export function createUpstreamGate(maxConcurrency: number, queueTimeoutMs: number): UpstreamGate {
  let inFlight = 0;
  const queue: Waiter[] = [];
  const busy = (why: string): AppError =>
    new AppError(503, 'UPSTREAM_BUSY', 'the service is at its FaceID capacity; try again shortly', {
      retryAfterSeconds: RETRY_AFTER_SECONDS,
      logContext: { reason: why },
    });

  const acquire = (): Promise<void> => {
    if (inFlight < maxConcurrency) {
      inFlight += 1;
      return Promise.resolve();
    }
    if (queue.length >= maxConcurrency * QUEUE_DEPTH_PER_SLOT || queueTimeoutMs === 0)
      return Promise.reject(busy('queue full'));
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        grant: () => {
          clearTimeout(waiter.timer);
          resolve();
        },
        timer: setTimeout(() => {
          queue.splice(queue.indexOf(waiter), 1);
          reject(busy('queue timeout'));
        }, queueTimeoutMs),
      };
      queue.push(waiter);
    });
  };

  const releaseSlot = (): void => {
    const next = queue.shift();
    // The slot passes straight to the next waiter, so inFlight stays the same.
    if (next === undefined) inFlight -= 1;
    else next.grant();
  };

  return {
    async run(call) {
      await acquire();
      try {
        return await call();
      } finally {
        releaseSlot();
      }
    },
    load: () => ({ inFlight, queued: queue.length }),
  };
}
