import type { RequestHandler } from 'express';

/** While the service drains for shutdown, every answer closes its connection, so pooled clients move on. */
export function closeConnectionsWhileDraining(draining: () => boolean): RequestHandler {
  return (_req, res, next) => {
    if (draining()) res.setHeader('Connection', 'close');
    next();
  };
}
