import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import busboy from 'busboy';
import type { MultipartForm } from '../token-request/multipart-form';

/** The plain node:http plumbing every sandbox route shares: FaceID's answer formats and body readers. */

/** A JSON answer. */
export interface Answer {
  status: number;
  body: Record<string, unknown>;
}

/**
 * A request's own problem, or how to answer it when no scenario intervenes. `success` runs only when the
 * answer is given, so what it changes (a token marked verified) changes only on a 200.
 */
export type Judgement = { problem: Answer } | { success: () => Answer };

export type FieldKind = 'text' | 'file';

/** FaceID's ids: `<unix seconds>,<uuid>`, also the shape of its biz_tokens. */
export const requestId = (): string => `${Math.floor(Date.now() / 1000)},${randomUUID()}`;

/** FaceID's error body. @see ../shared/seed/App-Verify.md (Errors) */
export const faceIdError = (status: number, error: string): Answer => ({
  status,
  body: { error, request_id: requestId(), time_used: 1 },
});

/**
 * The first name that is unknown, repeated, or a file where text belongs (or the reverse), as FaceID's
 * `BAD_ARGUMENTS: <name>`; undefined when the form's shape is right.
 */
export function shapeProblem(form: MultipartForm, kindOf: (name: string) => FieldKind | undefined): string | undefined {
  for (const [name, values] of [...form.fields, ...form.files] as Array<[string, unknown[]]>) {
    const kind = kindOf(name);
    if (kind === undefined || values.length > 1 || (kind === 'file') !== form.files.has(name)) {
      return `BAD_ARGUMENTS: ${name}`;
    }
    // A name sent both as text and as a file is a repeat of it.
    if (form.fields.has(name) && form.files.has(name)) return `BAD_ARGUMENTS: ${name}`;
  }
  return undefined;
}

/** Whether the announced length alone is over the limit, so the answer need not wait for the body. */
export const announcedOver = (req: IncomingMessage, maxBytes: number): boolean =>
  Number(req.headers['content-length'] ?? 0) > maxBytes;

export type ParsedForm = MultipartForm | 'too-large' | 'malformed';

/**
 * A multipart (or, for the sandbox's own routes, urlencoded) body read with busboy, at most `maxBytes`;
 * from `body` when the request was already read, else streamed from the request.
 */
export function parseForm(req: IncomingMessage, maxBytes: number, body?: Buffer): Promise<ParsedForm> {
  return new Promise((resolve) => {
    const fields = new Map<string, string[]>();
    const files = new Map<string, Buffer[]>();
    let totalBytes = 0;
    let settled = false;
    const finish = (result: ParsedForm): void => {
      if (settled) return;
      settled = true;
      if (typeof result === 'string' && body === undefined) {
        req.unpipe();
        req.resume();
      }
      resolve(result);
    };
    let parser: busboy.Busboy;
    try {
      parser = busboy({
        headers: req.headers,
        limits: { fileSize: maxBytes, fields: 100, files: 10, fieldSize: 64 * 1024 },
      });
    } catch {
      finish('malformed');
      if (body === undefined) req.resume();
      return;
    }
    parser.on('field', (name, value) => fields.set(name, [...(fields.get(name) ?? []), value]));
    parser.on('file', (name, stream) => {
      const chunks: Buffer[] = [];
      stream.on('data', (chunk: Buffer) => chunks.push(chunk));
      stream.on('limit', () => finish('too-large'));
      stream.on('end', () => files.set(name, [...(files.get(name) ?? []), Buffer.concat(chunks)]));
    });
    parser.on('close', () => finish({ fields, files }));
    parser.on('error', () => finish('malformed'));
    if (body !== undefined) {
      parser.end(body);
      return;
    }
    req.on('data', (chunk: Buffer) => {
      totalBytes += chunk.length;
      if (totalBytes > maxBytes) finish('too-large');
    });
    req.on('error', () => finish('malformed'));
    req.pipe(parser);
  });
}

/**
 * Past the limit, a body is still read (not kept) up to this many times the limit before the answer: closing a
 * socket with unread data resets it, and the client may lose the answer. Beyond, the answer goes at once.
 */
const DRAIN_FACTOR = 4;

/** The raw body, at most `maxBytes`; for the sandbox's own routes, which answer once the body is read. */
export function readBody(req: IncomingMessage, maxBytes: number): Promise<Buffer | 'too-large' | 'malformed'> {
  return new Promise((resolve) => {
    if (announcedOver(req, maxBytes * DRAIN_FACTOR)) {
      req.resume();
      resolve('too-large');
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size <= maxBytes) chunks.push(chunk);
      else if (size > maxBytes * DRAIN_FACTOR) resolve('too-large');
    });
    req.on('end', () => resolve(size > maxBytes ? 'too-large' : Buffer.concat(chunks)));
    req.on('error', () => resolve('malformed'));
  });
}

/** A small JSON body; undefined when it is too large or not JSON. */
export async function readJson(req: IncomingMessage, maxBytes = 4096): Promise<unknown> {
  const body = await readBody(req, maxBytes);
  if (typeof body === 'string') return undefined;
  try {
    return JSON.parse(body.toString('utf8'));
  } catch {
    return undefined;
  }
}

/** FaceID's 413 is plain text, not JSON. @see ../shared/seed/App-Verify.md (413) */
export function tooLarge(res: ServerResponse): void {
  res.writeHead(413, { 'Content-Type': 'text/plain', Connection: 'close' });
  res.end('Request Entity Too Large');
}

export function send(res: ServerResponse, answer: Answer): void {
  const body = JSON.stringify(answer.body);
  const close = answer.status === 413 ? { Connection: 'close' } : {};
  res.writeHead(answer.status, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(body),
    ...close,
  });
  res.end(body);
}

export function sendBytes(res: ServerResponse, bytes: Buffer, filename: string): void {
  res.writeHead(200, {
    'Content-Type': 'application/octet-stream',
    'Content-Length': bytes.length,
    'Content-Disposition': `attachment; filename="${filename}"`,
  });
  res.end(bytes);
}

export function sendEmpty(res: ServerResponse, status: number): void {
  res.writeHead(status);
  res.end();
}
