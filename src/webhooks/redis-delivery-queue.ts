import { type Job, Queue, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Config } from '../config/load-config';
import { type DeliveryPolicy, type DeliveryQueue, retryDelayAfter } from './delivery-queue';
import type { Delivery, WebhookSender } from './webhook-sender';

const QUEUE_NAME = 'webhooks';
/** Attempts running at once in one instance; a slow receiver holds one each for at most 10 s. */
const CONCURRENT_ATTEMPTS = 8;
/** Jobs read to find the oldest pending one: each state keeps its jobs in time order. */
const OLDEST_SAMPLE = 10;
const PENDING_STATES = ['waiting', 'delayed', 'active', 'prioritized'] as const;

/** Resolves once the connection is ready, or rejects after `ms` (at once when it is closed for good). */
async function readyWithin(connection: Redis, ms: number): Promise<void> {
  if (connection.status === 'ready') return;
  if (connection.status === 'end') throw new Error('the Redis connection is closed');
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      connection.off('ready', onReady);
      reject(new Error(`Redis not ready within ${ms} ms`));
    }, ms);
    const onReady = (): void => {
      clearTimeout(timer);
      resolve();
    };
    connection.once('ready', onReady);
  });
}

/** The receiver did not take the delivery: BullMQ schedules the next attempt with the back-off below. */
class DeliveryRefused extends Error {
  override name = 'DeliveryRefused';
}

/**
 * Pending webhooks in Redis (BullMQ): they survive the restart of every instance, and BullMQ's job lock
 * lets one instance only make each attempt. When Redis cannot take a new delivery, the process keeps it.
 */
export function createRedisDeliveryQueue(
  redis: Config['redis'] & { url: string },
  sender: WebhookSender,
  policy: DeliveryPolicy,
  fallback: DeliveryQueue,
  log: Logger,
): DeliveryQueue {
  // BullMQ prefixes its own keys; ioredis' keyPrefix would break its scripts.
  const prefix = `${redis.keyPrefix}bull`;
  // The producer fails fast while Redis is away (the request must not wait); the worker's blocking
  // connection waits for Redis to return, as BullMQ requires.
  const producer = new Redis(redis.url, {
    connectTimeout: redis.connectTimeoutMs,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    retryStrategy: (attempt: number) => Math.min(attempt * 100, redis.maxReconnectDelayMs),
  });
  const consumer = new Redis(redis.url, {
    connectTimeout: redis.connectTimeoutMs,
    maxRetriesPerRequest: null,
    retryStrategy: (attempt: number) => Math.min(attempt * 100, redis.maxReconnectDelayMs),
  });
  // ioredis reports every failed reconnect; the shared store's own log line already tells of the outage.
  producer.on('error', () => undefined);
  consumer.on('error', () => undefined);

  const queue = new Queue<Delivery>(QUEUE_NAME, { connection: producer, prefix });
  queue.on('error', () => undefined);
  const worker = new Worker<Delivery>(
    QUEUE_NAME,
    async (job: Job<Delivery>) => {
      const result = await sender.attempt(job.data);
      if (!result.delivered) throw new DeliveryRefused(result.reason);
    },
    {
      connection: consumer,
      prefix,
      concurrency: CONCURRENT_ATTEMPTS,
      settings: { backoffStrategy: (attemptsMade: number) => retryDelayAfter(attemptsMade, policy.retryDelayMs) },
    },
  );
  worker.on('completed', (job: Job<Delivery>) => {
    policy.onAttempt('delivered', job.data, { delivered: true, status: 200 });
  });
  worker.on('failed', (job: Job<Delivery> | undefined, error: Error) => {
    if (job === undefined) return;
    const final = job.attemptsMade >= (job.opts.attempts ?? 1);
    policy.onAttempt(final ? 'gave_up' : 'retrying', job.data, { delivered: false, reason: error.message });
  });
  worker.on('error', (error: Error) => log.warn({ err: error }, 'webhook worker error'));

  return {
    async enqueue(delivery) {
      try {
        // Just after start the connection may still be opening: worth a short wait, not a delivery kept in memory.
        await readyWithin(producer, redis.connectTimeoutMs);
        await queue.add(QUEUE_NAME, delivery, {
          // The webhook id names the job: one delivery per event, however often it is queued.
          jobId: delivery.webhookId,
          attempts: policy.maxAttempts,
          backoff: { type: 'custom' },
          // Nothing of a delivery (its image above all) outlives it.
          removeOnComplete: true,
          removeOnFail: true,
        });
      } catch (error) {
        log.warn(
          { err: error, webhook_id: delivery.webhookId },
          'Redis did not take the webhook: this instance keeps it',
        );
        await fallback.enqueue(delivery);
      }
    },
    async pending() {
      const local = await fallback.pending();
      try {
        const counts = await queue.getJobCounts(...PENDING_STATES);
        const count = Object.values(counts).reduce((sum, value) => sum + value, 0);
        const samples = await Promise.all(
          PENDING_STATES.map((state) => queue.getJobs([state], 0, OLDEST_SAMPLE - 1, true)),
        );
        let oldest = Date.now() - local.oldestAgeSeconds * 1000;
        for (const job of samples.flat()) oldest = Math.min(oldest, job.data.queuedAt);
        return { count: count + local.count, oldestAgeSeconds: (Date.now() - oldest) / 1000 };
      } catch {
        return local;
      }
    },
    async close() {
      await worker.close();
      await queue.close();
      await fallback.close();
      for (const connection of [producer, consumer]) connection.disconnect();
      sender.close();
    },
  };
}
