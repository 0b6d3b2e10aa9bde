import type { IncomingMessage, ServerResponse } from 'node:http';
import { AppError } from '../errors/app-error';
import { MAX_REQUEST_BYTES } from '../faceid/parameters';
import type { UploadBufferPool } from '../limits/upload-buffer-pool';
import type { UploadMemoryBudget } from '../limits/upload-memory-budget';
import type { MultipartForm } from '../token-request/multipart-form';
import { boundaryOf, parseMultipartBody } from '../token-request/multipart-parser';
import { readUpload, uploadTooLarge } from '../token-request/read-upload';


export interface ReadForm {
  form: MultipartForm;
  /** Gives the body's buffer back to the pool: call once nothing reads the form's files any more. */
  recycle: () => void;
}

/**
 * Reads and parses the body, refusing what is not multipart or too large (before reading it when the
 * `Content-Length` says so, and while reading it otherwise), and holding at most the upload
 * memory budget's worth of bodies at once. Resolves undefined when the client left while it waited.
 */
export async function readMultipartForm(
  req: IncomingMessage,
  res: ServerResponse,
  budget: UploadMemoryBudget,
  pool: UploadBufferPool,
): Promise<ReadForm | undefined> {
  const contentType = req.headers['content-type'] ?? '';
  if (contentType.split(';')[0]?.trim().toLowerCase() !== 'multipart/form-data') {
    throw new AppError(415, 'UNSUPPORTED_MEDIA_TYPE', 'the body must be multipart/form-data');
  }
  const boundary = boundaryOf(contentType);
  const header = req.headers['content-length'];
  const announced = header === undefined ? undefined : Number(header);
  if (announced !== undefined && announced > MAX_REQUEST_BYTES) {
    // Refused without reading: the route closes the connection, so the rest is not waited for.
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
  release = await budget.reserve(announced ?? MAX_REQUEST_BYTES);
  if (gone) {
    release();
    return undefined;
  }
  const upload = await readUpload(req, announced, MAX_REQUEST_BYTES, pool);
  const recycle = (): void => {
    if (upload.pooled !== undefined) pool.give(upload.pooled);
  };
  try {
    return { form: parseMultipartBody(upload.body, boundary), recycle };
  } catch (error) {
    recycle();
    throw error;
  }
}

