import type { RequestHandler } from 'express';
import { badArgument } from '../errors/app-error';
import { callerOf, contextOf } from '../http/request-context';
import type { IdempotencyStore } from '../idempotency/idempotency-store';
import { idempotencyRecordKey } from '../idempotency/record-key';

/** 1 to 255 printable ASCII characters. @see CONTRACT section 1 */
const VALID_KEY = /^[\x20-\x7E]{1,255}$/;

/**
 * Reads and checks `Idempotency-Key` before the body is read. For a caller whose window is spent, the body
 * is read only when its key already holds an answer (to replay it); otherwise the 429 goes out before a
 * byte of the upload is taken in.
 */
export function idempotencyKey(store: IdempotencyStore): RequestHandler {
  return async (req, res, next) => {
    const context = contextOf(res);
    const sent = req.headersDistinct['idempotency-key'];
    if (sent !== undefined && (sent.length !== 1 || !VALID_KEY.test(sent[0] ?? ''))) {
      throw badArgument('Idempotency-Key', 'send one Idempotency-Key of 1 to 255 printable ASCII characters');
    }
    context.idempotencyKey = sent?.[0];
    if (context.rateLimited !== undefined) {
      if (context.idempotencyKey === undefined) throw context.rateLimited;
      const record = await store.find(idempotencyRecordKey(callerOf(res).id, context.idempotencyKey));
      if (record?.response === undefined) throw context.rateLimited;
      context.completedBefore = { fingerprint: record.fingerprint, response: record.response };
    }
    next();
  };
}
