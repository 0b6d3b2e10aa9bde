import { randomUUID } from 'node:crypto';
import type { RequestHandler } from 'express';
import { contextOf } from '../http/request-context';

/** A caller's id is echoed only when it is a plain token; anything else could smuggle text into logs. */
const ACCEPTED_REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** Takes the caller's `X-Request-Id` or makes one; pino-http then logs every line of the request under it. */
export const requestId: RequestHandler = (req, res, next) => {
  const offered = req.headers['x-request-id'];
  const id = typeof offered === 'string' && ACCEPTED_REQUEST_ID.test(offered) ? offered : randomUUID();
  req.id = id;
  contextOf(res).requestId = id;
  res.setHeader('X-Request-Id', id);
  next();
};
