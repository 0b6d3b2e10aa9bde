import { randomUUID } from 'node:crypto';
import type { FrontStep } from '../http/front-step';
import { contextOf } from '../http/request-context';

/** A caller's id is echoed only when it is a plain token; anything else could smuggle text into logs. */
const ACCEPTED_REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

export const requestId: FrontStep = (req, res, next) => {
  const offered = req.headers['x-request-id'];
  const id = typeof offered === 'string' && ACCEPTED_REQUEST_ID.test(offered) ? offered : randomUUID();
  contextOf(res).requestId = id;
  res.setHeader('X-Request-Id', id);
  next();
};
