import type { RequestHandler } from 'express';
import { outcomeOf, routeOf } from '../http/request-context';
import type { Metrics } from '../observability/metrics';

/** Methods Express serves; anything else is one label value, so a client cannot invent new series. */
const KNOWN_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);

/** Times every request by its route pattern (never the raw path) and counts those in flight. */
export function measureRequests(metrics: Metrics): RequestHandler {
  return (req, res, next) => {
    const end = metrics.httpDuration.startTimer();
    metrics.httpInFlight.inc();
    res.once('close', () => {
      metrics.httpInFlight.dec();
      end({
        route: routeOf(req),
        method: KNOWN_METHODS.has(req.method) ? req.method : 'OTHER',
        status: String(outcomeOf(res).status),
      });
    });
    next();
  };
}
