import type { RequestHandler } from 'express';
import { AppError } from '../errors/app-error';
import type { UploadMemoryBudget } from '../limits/upload-memory-budget';
import { boundaryOf, parseMultipartBody } from '../token-request/multipart-parser';
import { readUpload, uploadTooLarge } from '../token-request/read-upload';

/**
 * FaceID refuses requests over 20 MB; the service refuses them first, before reading them when the
 * `Content-Length` says so, and while reading them otherwise.
 * @see ../shared/seed/App-GetBizToken.md (413 Request Entity Too Large)
 */
export const MAX_REQUEST_BYTES = 20 * 1024 * 1024;

/**
 * Parses the body into `res.locals.form`, refusing what is not multipart or too large, and holding at most
 * the upload memory budget's worth of bodies at once.
 */
export function parseMultipart(budget: UploadMemoryBudget): RequestHandler {
  return async (req, res, next) => {
    if (!req.is('multipart/form-data')) throw new AppError(415, 'UNSUPPORTED_MEDIA_TYPE', 'the body must be multipart/form-data');
    const boundary = boundaryOf(req.headers['content-type'] ?? '');
    const header = req.headers['content-length'];
    const announced = header === undefined ? undefined : Number(header);
    if (announced !== undefined && announced > MAX_REQUEST_BYTES) {
      // Refuse without reading: the connection closes so the rest of the upload is not waited for.
      res.setHeader('Connection', 'close');
      throw uploadTooLarge(MAX_REQUEST_BYTES);
    }
    // Held until the answer is sent (the use case keeps the photos until FaceID has them). The listener
    // comes first: a client that gives up while waiting must not keep its reservation once it is granted.
    let release: (() => void) | undefined;
    let gone = false;
    res.once('close', () => {
      gone = true;
      release?.();
    });
    try {
      release = await budget.reserve(announced ?? MAX_REQUEST_BYTES);
      if (gone) {
        release();
        return;
      }
      res.locals.form = parseMultipartBody(await readUpload(req, announced, MAX_REQUEST_BYTES), boundary);
    } catch (error) {
      // A refused or broken upload is not read to its end: the rest of it is not worth waiting for.
      if (error instanceof AppError && error.status !== 400) res.setHeader('Connection', 'close');
      throw error;
    }
    next();
  };
}
