import { randomUUID } from 'node:crypto';
import type { ParameterName } from './parameters';

export interface EncodedForm {
  contentType: string;
  /** In order: one buffer for all the text parts, then each file's header, bytes and line break, then the end. */
  chunks: Buffer[];
  length: number;
}

export interface FormFile {
  name: ParameterName;
  filename: string;
  contentType: string;
  bytes: Buffer;
}

/**
 * Encodes multipart/form-data (RFC 7578) around the photos without copying them: the photos are written
 * to the socket as they are, between small prebuilt headers. Names are typed as the parameter table's
 * and file names are built from them, never taken from the client, so no quote or line break can reach
 * the part headers.
 */
export function encodeMultipart(fields: ReadonlyArray<readonly [ParameterName, string]>, files: readonly FormFile[]): EncodedForm {
  // 122 random bits: a photo containing the delimiter by chance is as likely as one guessing it. randomUUID
  // draws from a cached pool of entropy; randomBytes asked the system for 12 bytes on every request.
  const boundary = `----faceid-token-service-${randomUUID()}`;
  const text = fields.map(([name, value]) => `--${boundary}\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n${value}\r\n`).join('');
  const chunks: Buffer[] = [Buffer.from(text, 'utf8')];
  for (const file of files) {
    chunks.push(
      Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${file.name}"; filename="${file.filename}"\r\nContent-Type: ${file.contentType}\r\n\r\n`, 'latin1'),
      file.bytes,
      CRLF,
    );
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`, 'latin1'));
  return { contentType: `multipart/form-data; boundary=${boundary}`, chunks, length: chunks.reduce((sum, chunk) => sum + chunk.length, 0) };
}

const CRLF = Buffer.from('\r\n', 'latin1');
