import type { RequestHandler } from 'express';
import { outcomeOf } from '../http/request-context';
import type { Metrics } from '../observability/metrics';

/** When a request that may call FaceID ends: FaceID's own result and the upstream time, for the metrics. */
export function countUpstreamResults(metrics: Metrics): RequestHandler {
  return (_req, res, next) => {
    res.once('close', () => {
      const { code, upstream } = outcomeOf(res);
      if (typeof upstream?.upstreamMs === 'number')
        metrics.upstreamDuration.observe({ outcome: code }, upstream.upstreamMs / 1000);
      if (typeof upstream?.faceidResult === 'string') metrics.faceidResults.inc({ result: upstream.faceidResult });
    });
    next();
  };
}
