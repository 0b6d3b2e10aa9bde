import type { IncomingMessage } from 'node:http';
import { AppError } from '../errors/app-error';
import type { UploadBufferPool } from '../limits/upload-buffer-pool';

export const uploadTooLarge = (maxBytes: number): AppError =>
  new AppError(413, 'PAYLOAD_TOO_LARGE', `the request is larger than ${maxBytes} bytes`);

const clientGone = (): AppError => new AppError(400, 'BAD_ARGUMENTS', 'the client closed the connection before the body was complete');

export interface Upload {
  body: Buffer;
  /** The pool's buffer behind `body`, to give back once nothing reads the body any more. */
  pooled: Buffer | undefined;
}

/**
 * Reads a request body into one buffer. Sized by `Content-Length` when announced: a pooled buffer, one copy
 * of every byte, no joining. A chunked body's pieces are kept as they come and joined once at its end. Past
 * `maxBytes` it rejects at once, without waiting for the rest, and discards what still arrives; the caller
 * closes the connection.
 */
export function readUpload(req: IncomingMessage, announced: number | undefined, maxBytes: number, pool: UploadBufferPool): Promise<Upload> {
  return new Promise((resolve, reject) => {
    if (req.destroyed) {
      reject(clientGone());
      return;
    }
    const sized = announced === undefined ? undefined : pool.take(announced);
    // Once settled, later events are ignored rather than unsubscribed: taking three listeners off a stream
    // per request cost more than the checks.
    let settled = false;
    const fail = (error: AppError): void => {
      if (settled) return;
      settled = true;
      if (sized !== undefined) pool.give(sized);
      reject(error);
    };
    let pieces: Buffer[] = [];
    let received = 0;
    const onData = (chunk: Buffer): void => {
      if (settled) return;
      if (received + chunk.length > (announced ?? maxBytes)) {
        pieces = [];
        req.resume();
        fail(uploadTooLarge(maxBytes));
        return;
      }
      if (sized === undefined) pieces.push(chunk);
      else chunk.copy(sized, received);
      received += chunk.length;
    };
    const onEnd = (): void => {
      if (settled) return;
      settled = true;
      const body = sized === undefined ? Buffer.concat(pieces, received) : sized.subarray(0, received);
      // The listeners stay until the request is gone: they must not keep a chunked body's pieces beside their join.
      pieces = [];
      resolve({ body, pooled: sized });
    };
    // Every request closes in the end; only an unsettled one is worth an error (and its stack trace).
    const onClose = (): void => {
      if (!settled) fail(clientGone());
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('close', onClose);
  });
}
