import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { BreakerState, CircuitBreaker } from '../limits/circuit-breaker';
import type { UploadMemoryBudget } from '../limits/upload-memory-budget';
import type { UpstreamGate } from '../limits/upstream-gate';

/** Every label value is bounded: route patterns, status codes and the service's own error codes. */
export interface Metrics {
  registry: Registry;
  httpDuration: Histogram<'route' | 'method' | 'status'>;
  upstreamDuration: Histogram<'outcome'>;
  outcomes: Counter<'code'>;
  faceidResults: Counter<'result'>;
  rateLimitRejections: Counter;
  idempotentReplays: Counter;
  httpInFlight: Gauge;
  verdicts: Counter<'verdict' | 'reason'>;
  webhookDeliveries: Counter<'outcome'>;
}

/** What the gauges read when Prometheus scrapes. */
export interface GaugeSources {
  gate: UpstreamGate;
  breaker: CircuitBreaker;
  uploadBudget: UploadMemoryBudget;
  /** Pending webhooks; undefined while no webhook is configured. */
  webhookBacklog: () => Promise<{ count: number; oldestAgeSeconds: number }> | undefined;
}

const BREAKER_STATE_VALUE: Record<BreakerState, number> = { closed: 0, 'half-open': 1, open: 2 };

export function createMetrics({ gate, breaker, uploadBudget, webhookBacklog }: GaugeSources): Metrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  new Gauge({
    name: 'faceid_circuit_state',
    help: 'FaceID circuit breaker: 0 closed, 1 half-open, 2 open',
    registers: [registry],
    collect() {
      this.set(BREAKER_STATE_VALUE[breaker.state()]);
    },
  });
  new Gauge({
    name: 'upload_memory_reserved_bytes',
    help: 'Bytes of request bodies reserved in the upload memory budget',
    registers: [registry],
    collect() {
      this.set(uploadBudget.inUse());
    },
  });
  new Gauge({
    name: 'faceid_calls_in_flight',
    help: 'FaceID calls in flight',
    registers: [registry],
    collect() {
      this.set(gate.load().inFlight);
    },
  });
  new Gauge({
    name: 'faceid_calls_queued',
    help: 'Token requests waiting for a FaceID slot',
    registers: [registry],
    collect() {
      this.set(gate.load().queued);
    },
  });
  // Both gauges from one read of the queue per scrape.
  let backlog: Promise<{ count: number; oldestAgeSeconds: number }> | undefined;
  new Gauge({
    name: 'webhook_queue_depth',
    help: 'Webhook deliveries pending (waiting, scheduled for a retry, or being attempted)',
    registers: [registry],
    async collect() {
      backlog = webhookBacklog();
      this.set((await backlog)?.count ?? 0);
    },
  });
  new Gauge({
    name: 'webhook_oldest_pending_seconds',
    help: 'Age of the oldest pending webhook delivery',
    registers: [registry],
    async collect() {
      const pending = await (backlog ?? webhookBacklog());
      this.set(pending === undefined || pending.count === 0 ? 0 : pending.oldestAgeSeconds);
    },
  });
  return {
    registry,
    verdicts: new Counter({
      name: 'verifications_total',
      help: 'Verdicts by verdict and reason (FaceID result messages, the policy reasons, or OTHER)',
      labelNames: ['verdict', 'reason'],
      registers: [registry],
    }),
    webhookDeliveries: new Counter({
      name: 'webhook_deliveries_total',
      help: 'Webhook delivery attempts by outcome: delivered, retrying (failed, another attempt scheduled), gave_up',
      labelNames: ['outcome'],
      registers: [registry],
    }),
    httpDuration: new Histogram({
      name: 'http_request_duration_seconds',
      help: 'Duration of HTTP requests',
      labelNames: ['route', 'method', 'status'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    }),
    upstreamDuration: new Histogram({
      name: 'faceid_upstream_duration_seconds',
      help: 'Duration of FaceID exchanges, retries included',
      labelNames: ['outcome'],
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20],
      registers: [registry],
    }),
    outcomes: new Counter({
      name: 'biz_token_outcomes_total',
      help: "Token requests by the service's outcome code",
      labelNames: ['code'],
      registers: [registry],
    }),
    faceidResults: new Counter({
      name: 'faceid_results_total',
      help: "FaceID exchanges by FaceID's result code (OK, its error codes, TIMEOUT, CONNECTION_FAILED, UNREADABLE)",
      labelNames: ['result'],
      registers: [registry],
    }),
    rateLimitRejections: new Counter({
      name: 'rate_limit_rejections_total',
      help: 'Requests refused by the per-user rate limit',
      registers: [registry],
    }),
    idempotentReplays: new Counter({
      name: 'idempotent_replays_total',
      help: 'Answers replayed for a repeated Idempotency-Key',
      registers: [registry],
    }),
    httpInFlight: new Gauge({
      name: 'http_requests_in_flight',
      help: 'HTTP requests being answered',
      registers: [registry],
    }),
  };
}
