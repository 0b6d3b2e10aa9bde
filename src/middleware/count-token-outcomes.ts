import type { RequestHandler } from 'express';
import { outcomeOf } from '../http/request-context';
import type { Metrics } from '../observability/metrics';

/** When a token request ends: its outcome code, for the metrics. */
export function countTokenOutcomes(metrics: Metrics): RequestHandler {
  return (_req, res, next) => {
    res.once('close', () => {
      const { code } = outcomeOf(res);
      metrics.outcomes.inc({ code });
      if (code === 'RATE_LIMITED') metrics.rateLimitRejections.inc();
    });
    next();
  };
}
