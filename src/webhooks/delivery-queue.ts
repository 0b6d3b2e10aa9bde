import type { Logger } from 'pino';
import type { AttemptResult, Delivery, WebhookSender } from './webhook-sender';

/** Pending webhooks: each is attempted until a 2xx or until its attempts run out. */
export interface DeliveryQueue {
  enqueue(delivery: Delivery): Promise<void>;
  /** Deliveries not yet ended, and how long the oldest has waited. */
  pending(): Promise<{ count: number; oldestAgeSeconds: number }>;
  close(): Promise<void>;
}

export type DeliveryOutcome = 'delivered' | 'retrying' | 'gave_up';

export interface DeliveryPolicy {
  maxAttempts: number;
  /** Delay before the second attempt; doubled for each further one. */
  retryDelayMs: number;
  /** Told after every attempt (metrics, the warn line of a delivery given up). */
  onAttempt: (outcome: DeliveryOutcome, delivery: Pick<Delivery, 'webhookId'>, result: AttemptResult) => void;
}

const MAX_RETRY_DELAY_MS = 60 * 60 * 1000;

/** Exponential back-off, at most an hour apart. @see CONTRACT section 7.3 */
export const retryDelayAfter = (attemptsMade: number, firstDelayMs: number): number =>
  Math.min(MAX_RETRY_DELAY_MS, firstDelayMs * 2 ** Math.max(0, attemptsMade - 1));

/** Past this many pending deliveries in one process the oldest is given up, so memory stays bounded. */
const MAX_PENDING_IN_MEMORY = 10_000;

/** Deliveries in the process: the queue without Redis (a restart loses them; the start-up log says so). */
export function createMemoryDeliveryQueue(sender: WebhookSender, policy: DeliveryPolicy, log: Logger): DeliveryQueue {
  const pending = new Map<string, { delivery: Delivery; attempts: number; timer?: NodeJS.Timeout }>();
  let closed = false;

  const run = async (webhookId: string): Promise<void> => {
    const entry = pending.get(webhookId);
    if (entry === undefined || closed) return;
    entry.attempts += 1;
    const result = await sender.attempt(entry.delivery);
    // Given up while this attempt ran (evicted, or the queue closed): that outcome was already told.
    if (pending.get(webhookId) !== entry) return;
    if (result.delivered || entry.attempts >= policy.maxAttempts) {
      pending.delete(webhookId);
      policy.onAttempt(result.delivered ? 'delivered' : 'gave_up', entry.delivery, result);
      return;
    }
    policy.onAttempt('retrying', entry.delivery, result);
    // unref: a pending delivery must not keep a stopping process alive.
    entry.timer = setTimeout(() => void run(webhookId), retryDelayAfter(entry.attempts, policy.retryDelayMs));
    entry.timer.unref();
  };

  return {
    async enqueue(delivery) {
      if (pending.has(delivery.webhookId) || closed) return;
      pending.set(delivery.webhookId, { delivery, attempts: 0 });
      for (const [oldest, entry] of pending) {
        if (pending.size <= MAX_PENDING_IN_MEMORY) break;
        clearTimeout(entry.timer);
        pending.delete(oldest);
        policy.onAttempt('gave_up', entry.delivery, { delivered: false, reason: 'too many pending in this process' });
        log.warn({ webhook_id: oldest }, 'too many webhooks pending in this process: the oldest is given up');
      }
      void run(delivery.webhookId);
    },
    async pending() {
      let oldest = Date.now();
      for (const { delivery } of pending.values()) oldest = Math.min(oldest, delivery.queuedAt);
      return { count: pending.size, oldestAgeSeconds: (Date.now() - oldest) / 1000 };
    },
    async close() {
      closed = true;
      for (const entry of pending.values()) clearTimeout(entry.timer);
      sender.close();
    },
  };
}
