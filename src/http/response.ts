import type { IncomingMessage, ServerResponse } from 'node:http';

/** Writes a whole JSON answer: status, type, exact length. */
export function sendJson(res: ServerResponse, status: number, contentType: string, body: unknown): void {
  const text = JSON.stringify(body);
  res.statusCode = status;
  res.setHeader('Content-Type', `${contentType}; charset=utf-8`);
  res.setHeader('Content-Length', Buffer.byteLength(text));
  res.end(text);
}

/** How long a refused request's connection is drained after the answer, so the client can read it. */
const LINGER_MS = 2_000;

/**
 * For an answer sent before the request's body was read (a 401, 429, 413 or 503 to an upload): the
 * connection closes after the answer rather than reading up to 20 MB it will not use. It closes without
 * cutting off a client still sending: the socket is half-closed and what still arrives is read and dropped
 * for a moment, as nginx's lingering close does. Closing at once would make the kernel answer those bytes
 * with a reset, and many clients then report the reset instead of the answer already in their buffer.
 */
export function closeAfterAnswer(req: IncomingMessage, res: ServerResponse): void {
  res.setHeader('Connection', 'close');
  const socket = req.socket;
  socket.destroySoon = () => {
    socket.end();
    req.resume();
    socket.resume();
    setTimeout(() => socket.destroy(), LINGER_MS).unref();
  };
}
