import { parse as parseContentType } from 'content-type';
import type { RequestHandler } from 'express';
import onFinished from 'on-finished';
import { AppError, badArgument } from '../errors/app-error';
import { MAX_REQUEST_BYTES } from '../faceid/parameters';
import type { UploadMemoryBudget } from '../limits/upload-memory-budget';

export const uploadTooLarge = (): AppError =>
  new AppError(413, 'PAYLOAD_TOO_LARGE', `the request is larger than ${MAX_REQUEST_BYTES} bytes`);

/** RFC 2046 §5.1.1: 1 to 70 characters from a small set, not ending in a space. */
const BOUNDARY_CHARS = /^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$/;
const BOUNDARY_PARAMETER = /;\s*boundary\s*=/gi;

/**
 * Everything decided before a byte of the body is read: the body must be multipart/form-data with one
 * well-formed boundary (parsers disagree on which of two counts, so two are refused), an announced length
 * over the limit is a 413 at once, and the upload reserves its size (the maximum when it announces none)
 * from the memory budget, waiting unread while the budget is taken. The reservation is given back when the
 * response ends, however it ends: answered, failed, or the connection closed or reset at any point.
 */
export function uploadGate(budget: UploadMemoryBudget): RequestHandler {
  return async (req, res, next) => {
    const contentTypes = req.headersDistinct['content-type'] ?? [];
    if (contentTypes.length > 1) throw badArgument('Content-Type', 'send one Content-Type header, not several');
    if (req.is('multipart/form-data') !== 'multipart/form-data') {
      throw new AppError(415, 'UNSUPPORTED_MEDIA_TYPE', 'the body must be multipart/form-data');
    }
    checkBoundary(contentTypes[0] ?? '');
    const announced = req.headers['content-length'] === undefined ? undefined : Number(req.headers['content-length']);
    if (announced !== undefined && announced > MAX_REQUEST_BYTES) throw uploadTooLarge();

    const reservation = budget.reserve(announced ?? MAX_REQUEST_BYTES);
    onFinished(res, reservation.release);
    await reservation.granted;
    next();
  };
}

function checkBoundary(contentType: string): void {
  const malformed = (detail: string): AppError => new AppError(400, 'BAD_ARGUMENTS', `the Content-Type ${detail}`);
  if ((contentType.match(BOUNDARY_PARAMETER)?.length ?? 0) > 1) throw malformed('names more than one boundary');
  let boundary: string | undefined;
  try {
    boundary = parseContentType(contentType).parameters.boundary;
  } catch {
    throw malformed('cannot be read');
  }
  if (boundary === undefined || boundary.length === 0) throw malformed('has no boundary');
  if (!BOUNDARY_CHARS.test(boundary))
    throw malformed('has a boundary longer than 70 characters or with characters RFC 2046 does not allow');
}
