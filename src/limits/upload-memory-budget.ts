import { AppError } from '../errors/app-error';

/**
 * Bounds the bytes of request bodies held in memory at once, by design rather than by luck: a request
 * reserves its announced size (or the maximum when it announces none) before its body is read, and waits,
 * unread, while the budget is taken: TCP flow control then keeps the bytes in the client.
 */
export interface UploadMemoryBudget {
  reserve(bytes: number): Reservation;
  inUse(): number;
}

export interface Reservation {
  /** Resolves once the bytes are granted; rejects with 503 after the wait. */
  granted: Promise<void>;
  /** Gives the bytes back, or leaves the queue if still waiting. Safe to call at any time, more than once. */
  release(): void;
}

interface Waiter {
  bytes: number;
  grant: () => void;
  /** The holder gave up its place: the wait ends with this error, which nobody is left to see. */
  withdraw: () => void;
}

export function createUploadMemoryBudget(totalBytes: number, waitMs: number): UploadMemoryBudget {
  let used = 0;
  const waiting: Waiter[] = [];

  const grantWaiting = (): void => {
    // First come, first served: a large upload is not starved by a stream of small ones.
    while (waiting.length > 0 && used + (waiting[0]?.bytes ?? 0) <= totalBytes) {
      const next = waiting.shift() as Waiter;
      used += next.bytes;
      next.grant();
    }
  };

  return {
    inUse: () => used,
    reserve(requested) {
      // A body larger than the whole budget still gets through, alone.
      const bytes = Math.min(requested, totalBytes);
      let state: 'waiting' | 'held' | 'released' = 'waiting';
      let timer: NodeJS.Timeout | undefined;
      let waiter: Waiter | undefined;
      const granted = new Promise<void>((resolve, reject) => {
        if (waiting.length === 0 && used + bytes <= totalBytes) {
          used += bytes;
          state = 'held';
          resolve();
          return;
        }
        const queued: Waiter = {
          bytes,
          grant: () => {
            clearTimeout(timer);
            state = 'held';
            resolve();
          },
          withdraw: () => {
            clearTimeout(timer);
            reject(new AppError(400, 'BAD_ARGUMENTS', 'the client left before its upload was read'));
          },
        };
        timer = setTimeout(() => {
          waiting.splice(waiting.indexOf(queued), 1);
          state = 'released';
          reject(
            new AppError(503, 'UPSTREAM_BUSY', 'the service is receiving too many uploads at once; try again shortly', {
              retryAfterSeconds: 1,
              logContext: { reason: 'upload memory budget' },
            }),
          );
        }, waitMs);
        waiter = queued;
        waiting.push(queued);
      });
      const release = (): void => {
        if (state === 'held') {
          used -= bytes;
          grantWaiting();
        } else if (state === 'waiting' && waiter !== undefined) {
          waiting.splice(waiting.indexOf(waiter), 1);
          waiter.withdraw();
          // Its place in the queue may have been all that held back the ones behind it.
          grantWaiting();
        }
        state = 'released';
      };
      return { granted, release };
    },
  };
}
