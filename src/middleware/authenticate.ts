import type { RequestHandler } from 'express';
import type { AuthenticateCaller } from '../auth/authenticate-caller';

/** Puts the caller into `res.locals.caller`, or answers 401 before any budget is spent. */
export function authenticate(authenticateCaller: AuthenticateCaller): RequestHandler {
  return async (req, res, next) => {
    // req.ip honours TRUST_PROXY: forged X-Forwarded-For headers count only from trusted proxies.
    res.locals.caller = await authenticateCaller(req.headers.authorization, req.ip ?? req.socket.remoteAddress ?? 'unknown');
    next();
  };
}
