import type { Logger } from 'pino';
import type { Config } from '../config/load-config';
import type { Metrics } from '../observability/metrics';
import { createMemoryDeliveryQueue, type DeliveryPolicy, type DeliveryQueue } from './delivery-queue';
import { createRedisDeliveryQueue } from './redis-delivery-queue';
import { createWebhookSender } from './webhook-sender';

/** The webhook queue the configuration asks for: none without WEBHOOK_URL, Redis when shared, else the process. */
export function createDeliveryQueue(config: Config, metrics: Metrics, log: Logger): DeliveryQueue | undefined {
  const { url, secret, maxAttempts, retryDelayMs } = config.webhook;
  if (url === undefined || secret === undefined) return undefined;
  const webhookLog = log.child({ component: 'webhooks' });
  const sender = createWebhookSender(url, secret);
  const policy: DeliveryPolicy = {
    maxAttempts,
    retryDelayMs,
    onAttempt: (outcome, delivery, result) => {
      metrics.webhookDeliveries.inc({ outcome });
      const facts = { webhook_id: delivery.webhookId, ...(result.delivered ? {} : { reason: result.reason }) };
      if (outcome === 'gave_up')
        webhookLog.warn({ ...facts, attempts: maxAttempts }, 'webhook given up: attempts spent');
      else webhookLog.info(facts, outcome === 'delivered' ? 'webhook delivered' : 'webhook attempt failed; retrying');
    },
  };
  const memory = createMemoryDeliveryQueue(sender, policy, webhookLog);
  if (config.redis.url === undefined) {
    webhookLog.warn('webhooks wait in this process: a restart loses the pending ones (set REDIS_URL to keep them)');
    return memory;
  }
  return createRedisDeliveryQueue({ ...config.redis, url: config.redis.url }, sender, policy, memory, webhookLog);
}
