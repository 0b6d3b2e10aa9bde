import { AppError } from '../errors/app-error';

/**
 * Bounds the bytes of request bodies held in memory at once, by design rather than by luck: a request
 * reserves its announced size (or the maximum when it announces none) before its body is read, and waits,
 * unread, while the budget is taken: TCP flow control then keeps the bytes in the client.
 */
export interface UploadMemoryBudget {
  /** Resolves with a release function, or rejects with 503 after `waitMs`. */
  reserve(bytes: number): Promise<() => void>;
  inUse(): number;
}

interface Waiter {
  bytes: number;
  grant: () => void;
}

export function createUploadMemoryBudget(totalBytes: number, waitMs: number): UploadMemoryBudget {
  let used = 0;
  const waiting: Waiter[] = [];

  const releaser = (bytes: number): (() => void) => {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      used -= bytes;
      // First come, first served: a large upload is not starved by a stream of small ones.
      while (waiting.length > 0 && used + (waiting[0]?.bytes ?? 0) <= totalBytes) {
        const next = waiting.shift() as Waiter;
        used += next.bytes;
        next.grant();
      }
    };
  };

  return {
    inUse: () => used,
    reserve(requested) {
      // A body larger than the whole budget still gets through, alone.
      const bytes = Math.min(requested, totalBytes);
      if (waiting.length === 0 && used + bytes <= totalBytes) {
        used += bytes;
        return Promise.resolve(releaser(bytes));
      }
      return new Promise((resolve, reject) => {
        const waiter: Waiter = {
          bytes,
          grant: () => {
            clearTimeout(timer);
            resolve(releaser(bytes));
          },
        };
        const timer = setTimeout(() => {
          waiting.splice(waiting.indexOf(waiter), 1);
          reject(
            new AppError(503, 'UPSTREAM_BUSY', 'the service is receiving too many uploads at once; try again shortly', {
              retryAfterSeconds: 1,
              logContext: { reason: 'upload memory budget' },
            }),
          );
        }, waitMs);
        waiting.push(waiter);
      });
    },
  };
}
