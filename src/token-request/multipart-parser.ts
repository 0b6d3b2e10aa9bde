import { AppError, badArgument } from '../errors/app-error';
import type { MultipartForm } from './multipart-form';

/**
 * The endpoint has 16 client fields and 3 photos at most; anything far beyond is an attack, not a mistake.
 * The limits multer had, kept when the parser changed (see README, "Performance").
 */
export const MULTIPART_LIMITS = {
  files: 3,
  fields: 24,
  parts: 32,
  fieldValueBytes: 1024,
  fieldNameBytes: 64,
  /** A part's header block: a Content-Disposition and a Content-Type fit many times over. */
  headerBytes: 2048,
} as const;

const CRLF = Buffer.from('\r\n');
const HEADER_END = Buffer.from('\r\n\r\n');
const DASH = 0x2d;

/** RFC 2046 §5.1.1: 1 to 70 characters from a small set, not ending in a space. */
const BOUNDARY_PARAM = /;\s*boundary\s*=\s*(?:"([^"]{1,70})"|([^\s;"]{1,70}))/i;
const BOUNDARY_CHARS = /^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$/;
const DISPOSITION_PARAM = /;\s*([A-Za-z*]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s;]*))/g;

const malformed = (detail: string): AppError => new AppError(400, 'BAD_ARGUMENTS', `the body is not well-formed multipart/form-data: ${detail}`);

/** The boundary of a `multipart/form-data` Content-Type, or a 400 naming what is wrong with it. */
export function boundaryOf(contentType: string): string {
  const match = BOUNDARY_PARAM.exec(contentType);
  const boundary = match?.[1] ?? match?.[2];
  if (boundary === undefined) throw malformed('the Content-Type has no boundary');
  if (!BOUNDARY_CHARS.test(boundary)) throw malformed('the boundary has characters RFC 2046 does not allow');
  return boundary;
}

/**
 * Parses a whole multipart/form-data body held in one buffer (RFC 7578). Files are views into that buffer,
 * not copies; the boundary is found with Buffer#indexOf, which is native code, where a streaming parser
 * scans every byte in JavaScript. Text values are decoded as UTF-8.
 */
export function parseMultipartBody(body: Buffer, boundary: string): MultipartForm {
  const delimiter = Buffer.from(`\r\n--${boundary}`, 'latin1');
  const fields = new Map<string, string[]>();
  const files = new Map<string, Buffer[]>();
  const counts = { parts: 0, fields: 0, files: 0 };
  let totalBytes = 0;

  // The first delimiter may open the body or follow a preamble (which then ends with CRLF).
  const opening = delimiter.subarray(2);
  let position = body.subarray(0, opening.length).equals(opening) ? 0 : body.indexOf(delimiter);
  if (position === -1) throw malformed('no part starts with the boundary');
  position += position === 0 ? opening.length : delimiter.length;

  for (;;) {
    if (body[position] === DASH && body[position + 1] === DASH) break;
    position = afterLinePadding(body, position);
    const headerEnd = body.indexOf(HEADER_END, position - 2);
    if (headerEnd === -1 || headerEnd - position > MULTIPART_LIMITS.headerBytes) throw malformed('a part has no end to its headers');
    const contentStart = headerEnd + HEADER_END.length;
    const contentEnd = body.indexOf(delimiter, contentStart);
    if (contentEnd === -1) throw malformed('the body ends before its closing boundary');

    counts.parts += 1;
    if (counts.parts > MULTIPART_LIMITS.parts) throw new AppError(400, 'BAD_ARGUMENTS', `at most ${MULTIPART_LIMITS.parts} parts may be sent`);
    const { name, isFile } = dispositionOf(body.toString('latin1', position, Math.max(position, headerEnd)));
    const content = body.subarray(contentStart, contentEnd);
    totalBytes += content.length;
    if (isFile) {
      counts.files += 1;
      if (counts.files > MULTIPART_LIMITS.files) throw new AppError(400, 'BAD_ARGUMENTS', `at most ${MULTIPART_LIMITS.files} files may be sent`);
      appendTo(files, name, content);
    } else {
      counts.fields += 1;
      if (counts.fields > MULTIPART_LIMITS.fields) throw new AppError(400, 'BAD_ARGUMENTS', `at most ${MULTIPART_LIMITS.fields} fields may be sent`);
      if (content.length > MULTIPART_LIMITS.fieldValueBytes) throw badArgument(name, `${name} is too long`);
      appendTo(fields, name, content.toString('utf8'));
    }
    position = contentEnd + delimiter.length;
  }
  return { fields, files, totalBytes };
}

/** After a delimiter: optional transport padding (spaces, tabs), then the line break. */
function afterLinePadding(body: Buffer, start: number): number {
  let position = start;
  while (body[position] === 0x20 || body[position] === 0x09) position += 1;
  if (body[position] !== CRLF[0] || body[position + 1] !== CRLF[1]) throw malformed('a boundary line does not end where it should');
  return position + 2;
}

/**
 * The field name and whether the part is a file (it has a filename), from a part's header block. The name
 * must be a plain key: brackets, `__proto__` and the like are left to validation, which knows the fields.
 */
function dispositionOf(headerBlock: string): { name: string; isFile: boolean } {
  let disposition: string | undefined;
  for (const line of headerBlock.length === 0 ? [] : headerBlock.split('\r\n')) {
    const colon = line.indexOf(':');
    if (colon <= 0) throw malformed('a part has a header line without a name');
    if (line.slice(0, colon).trim().toLowerCase() === 'content-disposition') disposition = line.slice(colon + 1).trim();
  }
  if (disposition === undefined || !/^form-data\s*(;|$)/i.test(disposition)) throw malformed('a part is not form-data');
  let name: string | undefined;
  let isFile = false;
  for (const match of disposition.matchAll(DISPOSITION_PARAM)) {
    const key = (match[1] ?? '').toLowerCase();
    const value = match[2] === undefined ? (match[3] ?? '') : match[2].replace(/\\(.)/g, '$1');
    if (key === 'name') name = value;
    else if (key === 'filename' || key === 'filename*') isFile = true;
  }
  if (name === undefined || name.length === 0) throw new AppError(400, 'BAD_ARGUMENTS', 'a part has no field name');
  if (Buffer.byteLength(name) > MULTIPART_LIMITS.fieldNameBytes) throw new AppError(400, 'BAD_ARGUMENTS', 'a field name is too long');
  return { name, isFile };
}

function appendTo<T>(map: Map<string, T[]>, name: string, value: T): void {
  const list = map.get(name);
  if (list === undefined) map.set(name, [value]);
  else list.push(value);
}
