import type { RequestHandler } from 'express';
import type { AuthenticateCaller } from '../auth/authenticate-caller';
import { badArgument } from '../errors/app-error';
import { contextOf } from '../http/request-context';

/**
 * Who is asking: the JWT's user, or under AUTH_MODE=none the client address as Express sees it (its
 * `trust proxy` rule decides which X-Forwarded-For to believe). Two Authorization headers are refused: Node
 * keeps the first, and a proxy that reads the last would have let another caller through.
 */
export function authenticate(authenticateCaller: AuthenticateCaller): RequestHandler {
  return async (req, res, next) => {
    if ((req.headersDistinct.authorization?.length ?? 0) > 1) {
      throw badArgument('Authorization', 'send one Authorization header, not several');
    }
    contextOf(res).caller = await authenticateCaller(req.headers.authorization, () => req.ip ?? 'unknown');
    next();
  };
}
