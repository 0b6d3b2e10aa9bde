import type { IncomingMessage } from 'node:http';
import { AppError } from '../errors/app-error';

export const uploadTooLarge = (maxBytes: number): AppError =>
  new AppError(413, 'PAYLOAD_TOO_LARGE', `the request is larger than ${maxBytes} bytes`);

const clientGone = (): AppError => new AppError(400, 'BAD_ARGUMENTS', 'the client closed the connection before the body was complete');

/**
 * Reads a request body into one buffer. Sized by `Content-Length` when announced: one copy of every byte,
 * no joining. A chunked body's pieces are kept as they come and joined once at its end. Past `maxBytes` it
 * rejects at once, without waiting for the rest, and discards what still arrives; the caller closes the
 * connection.
 */
export function readUpload(req: IncomingMessage, announced: number | undefined, maxBytes: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    if (req.destroyed) {
      reject(clientGone());
      return;
    }
    const sized = announced === undefined ? undefined : Buffer.allocUnsafe(announced);
    let pieces: Buffer[] = [];
    let received = 0;
    const onData = (chunk: Buffer): void => {
      if (received + chunk.length > (announced ?? maxBytes)) {
        stop();
        pieces = [];
        req.resume();
        reject(uploadTooLarge(maxBytes));
        return;
      }
      if (sized === undefined) pieces.push(chunk);
      else chunk.copy(sized, received);
      received += chunk.length;
    };
    const onEnd = (): void => {
      stop();
      resolve(sized === undefined ? Buffer.concat(pieces, received) : sized.subarray(0, received));
    };
    const onClose = (): void => {
      stop();
      reject(clientGone());
    };
    const stop = (): void => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('close', onClose);
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('close', onClose);
  });
}
