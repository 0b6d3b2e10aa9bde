import type { RequestHandler } from 'express';
import { outcomeOf } from '../http/request-context';
import type { Metrics } from '../observability/metrics';

/** When a token request ends: its outcome code, FaceID's own result and the upstream time, for the metrics. */
export function countTokenOutcomes(metrics: Metrics): RequestHandler {
  return (_req, res, next) => {
    res.once('close', () => {
      const { code, upstream } = outcomeOf(res);
      metrics.outcomes.inc({ code });
      if (code === 'RATE_LIMITED') metrics.rateLimitRejections.inc();
      if (typeof upstream?.upstreamMs === 'number')
        metrics.upstreamDuration.observe({ outcome: code }, upstream.upstreamMs / 1000);
      if (typeof upstream?.faceidResult === 'string') metrics.faceidResults.inc({ result: upstream.faceidResult });
    });
    next();
  };
}
