import type { IncomingMessage, ServerResponse } from 'node:http';
import { AppError } from '../errors/app-error';
import type { UploadMemoryBudget } from '../limits/upload-memory-budget';
import type { MultipartForm } from '../token-request/multipart-form';
import { boundaryOf, parseMultipartBody } from '../token-request/multipart-parser';
import { readUpload, uploadTooLarge } from '../token-request/read-upload';

/**
 * FaceID refuses requests over 20 MB; the service refuses them first, before reading them when the
 * `Content-Length` says so, and while reading them otherwise.
 * @see ../shared/seed/App-GetBizToken.md (413 Request Entity Too Large)
 */
export const MAX_REQUEST_BYTES = 20 * 1024 * 1024;

/**
 * Reads and parses the body, refusing what is not multipart or too large, and holding at most the upload
 * memory budget's worth of bodies at once. Resolves undefined when the client left while it waited.
 */
export async function readMultipartForm(req: IncomingMessage, res: ServerResponse, budget: UploadMemoryBudget): Promise<MultipartForm | undefined> {
  const contentType = req.headers['content-type'] ?? '';
  if (contentType.split(';')[0]?.trim().toLowerCase() !== 'multipart/form-data') {
    throw new AppError(415, 'UNSUPPORTED_MEDIA_TYPE', 'the body must be multipart/form-data');
  }
  const boundary = boundaryOf(contentType);
  const header = req.headers['content-length'];
  const announced = header === undefined ? undefined : Number(header);
  if (announced !== undefined && announced > MAX_REQUEST_BYTES) {
    // Refuse without reading: the connection closes so the rest of the upload is not waited for.
    closeAfterAnswer(req, res);
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
      return undefined;
    }
    return parseMultipartBody(await readUpload(req, announced, MAX_REQUEST_BYTES), boundary);
  } catch (error) {
    // A refused or broken upload is not read to its end: the rest of it is not worth waiting for.
    if (error instanceof AppError && error.status !== 400) closeAfterAnswer(req, res);
    throw error;
  }
}

/** How long a refused upload's connection is drained after the answer, so the client can read it. */
const LINGER_MS = 2_000;

/**
 * Closes the connection after the answer without cutting off a client still sending: the socket is
 * half-closed and what still arrives is read and dropped for a moment, as nginx's lingering close does.
 * Closing at once would make the kernel answer those bytes with a reset, and many clients then report the
 * reset instead of the 413 or 503 already in their receive buffer.
 */
function closeAfterAnswer(req: IncomingMessage, res: ServerResponse): void {
  res.setHeader('Connection', 'close');
  const socket = req.socket;
  socket.destroySoon = () => {
    socket.end();
    req.resume();
    socket.resume();
    setTimeout(() => socket.destroy(), LINGER_MS).unref();
  };
}
