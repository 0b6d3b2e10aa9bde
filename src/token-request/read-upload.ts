import type { IncomingMessage } from 'node:http';
import { AppError } from '../errors/app-error';

/** A chunked upload's buffer starts here and doubles as bytes arrive, up to the limit. */
const CHUNKED_START_BYTES = 256 * 1024;

export const uploadTooLarge = (maxBytes: number): AppError =>
  new AppError(413, 'PAYLOAD_TOO_LARGE', `the request is larger than ${maxBytes} bytes`);

const clientGone = (): AppError => new AppError(400, 'BAD_ARGUMENTS', 'the client closed the connection before the body was complete');

/**
 * Reads a request body into one buffer: sized by `Content-Length` when announced (one copy of every byte,
 * no joining), grown by doubling when the body is chunked. Past `maxBytes` it rejects at once, without
 * waiting for the rest, and discards what still arrives; the caller closes the connection.
 */
export function readUpload(req: IncomingMessage, announced: number | undefined, maxBytes: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    if (req.destroyed) {
      reject(clientGone());
      return;
    }
    let buffer = Buffer.allocUnsafe(announced ?? CHUNKED_START_BYTES);
    let received = 0;
    const onData = (chunk: Buffer): void => {
      if (received + chunk.length > buffer.length) {
        if (announced !== undefined || received + chunk.length > maxBytes) {
          stop();
          req.resume();
          reject(uploadTooLarge(maxBytes));
          return;
        }
        const grown = Buffer.allocUnsafe(Math.min(maxBytes, Math.max(buffer.length * 2, received + chunk.length)));
        buffer.copy(grown, 0, 0, received);
        buffer = grown;
      }
      chunk.copy(buffer, received);
      received += chunk.length;
    };
    const onEnd = (): void => {
      stop();
      resolve(buffer.subarray(0, received));
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
