import { AppError, badArgument } from '../errors/app-error';
import { FILE_PARAMETERS } from '../faceid/parameters';
import type { MultipartForm } from './multipart-form';

/**
 * Far above what a correct request sends (12 text fields and 3 photos): anything beyond is an attack, not a
 * mistake. Any part past these counts is refused, so the part count needs no limit of its own.
 */
const LIMITS = {
  files: FILE_PARAMETERS.length,
  fields: 24,
  fieldValueBytes: 1024,
  fieldNameBytes: 64,
  /** A part's header block: a Content-Disposition and a Content-Type fit many times over. */
  headerBytes: 2048,
  /** Spaces or tabs allowed after a boundary before its line break (RFC 2046's transport padding). */
  paddingBytes: 64,
} as const;

const CRLF = Buffer.from('\r\n');
const HEADER_END = Buffer.from('\r\n\r\n');
const DASH = 0x2d;

/** RFC 2046 §5.1.1: 1 to 70 characters from a small set, not ending in a space; the whole parameter value. */
const BOUNDARY_PARAM = /;\s*boundary\s*=\s*(?:"([^"]*)"|([^\s;"]*))\s*(?:;|$)/i;
const BOUNDARY_CHARS = /^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$/;
const DISPOSITION_PARAM = /;\s*([A-Za-z*]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s;]*))/g;
const UTF8 = new TextDecoder('utf-8', { fatal: true });
/**
 * The header block nearly every client writes, read with one match: a name without quotes or escapes, an
 * optional filename, an optional Content-Type. One of each at most, so nothing can be said twice. Any other
 * block takes the general reading, which costs several times as much.
 */
const COMMON_PART_HEADERS = /^content-disposition: form-data; name="([^"\\\r\n]*)"(; filename="[^"\\\r\n]*")?(?:\r\ncontent-type: [^\r\n]*)?$/i;

const malformed = (detail: string): AppError => new AppError(400, 'BAD_ARGUMENTS', `the body is not well-formed multipart/form-data: ${detail}`);

/** The boundary of a `multipart/form-data` Content-Type, or a 400 naming what is wrong with it. */
export function boundaryOf(contentType: string): string {
  const match = BOUNDARY_PARAM.exec(contentType);
  const boundary = match?.[1] ?? match?.[2];
  if (boundary === undefined || boundary.length === 0) throw malformed('the Content-Type has no boundary');
  if (!BOUNDARY_CHARS.test(boundary)) throw malformed('the boundary is longer than 70 characters or has characters RFC 2046 does not allow');
  return boundary;
}

/**
 * Parses a whole multipart/form-data body held in one buffer (RFC 7578). Files are views into that buffer,
 * not copies; the boundary is found with Buffer#indexOf, which is native code, where a streaming parser
 * scans every byte in JavaScript. Text values must be UTF-8.
 */
export function parseMultipartBody(body: Buffer, boundary: string): MultipartForm {
  const delimiter = Buffer.from(`\r\n--${boundary}`, 'latin1');
  const fields = new Map<string, string[]>();
  const files = new Map<string, Buffer[]>();
  let fieldCount = 0;
  let fileCount = 0;

  // The first delimiter opens the body, or follows a preamble and its line break (which may be all there is).
  const opening = delimiter.subarray(2);
  let position: number;
  if (body.subarray(0, opening.length).equals(opening)) position = opening.length;
  else {
    const found = body.indexOf(delimiter);
    if (found === -1) throw malformed('no part starts with the boundary');
    position = found + delimiter.length;
  }

  for (;;) {
    if (body[position] === DASH && body[position + 1] === DASH) break;
    position = afterLinePadding(body, position);
    // The part ends at the next delimiter; its headers are looked for only inside it.
    const contentEnd = body.indexOf(delimiter, position);
    if (contentEnd === -1) throw malformed('the body ends before its closing boundary');
    const headerEnd = body.subarray(0, contentEnd).indexOf(HEADER_END, position - 2);
    if (headerEnd === -1) throw malformed('a part has no blank line after its headers');
    if (headerEnd - position > LIMITS.headerBytes) throw malformed(`a part's headers are longer than ${LIMITS.headerBytes} bytes`);

    const { name, isFile } = dispositionOf(body.toString('utf8', position, Math.max(position, headerEnd)));
    const content = body.subarray(headerEnd + HEADER_END.length, contentEnd);
    if (isFile) {
      fileCount += 1;
      if (fileCount > LIMITS.files) throw new AppError(400, 'BAD_ARGUMENTS', `at most ${LIMITS.files} files may be sent`);
      appendTo(files, name, content);
    } else {
      fieldCount += 1;
      if (fieldCount > LIMITS.fields) throw new AppError(400, 'BAD_ARGUMENTS', `at most ${LIMITS.fields} fields may be sent`);
      if (content.length > LIMITS.fieldValueBytes) throw badArgument(name, `${name} is too long`);
      appendTo(fields, name, decodeUtf8(name, content));
    }
    position = contentEnd + delimiter.length;
  }
  return { fields, files };
}

/** After a delimiter: a little optional transport padding (spaces, tabs), then the line break. */
function afterLinePadding(body: Buffer, start: number): number {
  const lineEnd = body.indexOf(CRLF, start);
  if (lineEnd === -1 || lineEnd - start > LIMITS.paddingBytes) throw malformed('a boundary line does not end where it should');
  for (let position = start; position < lineEnd; position += 1) {
    if (body[position] !== 0x20 && body[position] !== 0x09) throw malformed('a boundary line does not end where it should');
  }
  return lineEnd + CRLF.length;
}

/** Forwarding a value with its bad bytes replaced would silently alter, say, a name. */
function decodeUtf8(name: string, bytes: Buffer): string {
  try {
    return UTF8.decode(bytes);
  } catch {
    throw badArgument(name, `${name} is not valid UTF-8`);
  }
}

/**
 * The field name and whether the part is a file (it has a filename), from a part's header block. Anything
 * said twice is refused: parsers disagree on which one counts. The name must be a plain key: brackets,
 * `__proto__` and the like are left to validation, which knows the fields.
 */
function dispositionOf(headerBlock: string): { name: string; isFile: boolean } {
  const common = COMMON_PART_HEADERS.exec(headerBlock);
  const { name, isFile } = common === null ? readDisposition(headerBlock) : { name: common[1] ?? '', isFile: common[2] !== undefined };
  if (name.length === 0) throw new AppError(400, 'BAD_ARGUMENTS', 'a part has no field name');
  if (Buffer.byteLength(name) > LIMITS.fieldNameBytes) throw new AppError(400, 'BAD_ARGUMENTS', 'a field name is too long');
  return { name, isFile };
}

/** The general reading of a header block: headers in every order, spacing, quoting and escapes. */
function readDisposition(headerBlock: string): { name: string; isFile: boolean } {
  let disposition: string | undefined;
  for (const line of headerBlock.length === 0 ? [] : headerBlock.split('\r\n')) {
    const colon = line.indexOf(':');
    if (colon <= 0) throw malformed('a part has a header line without a name');
    if (line.slice(0, colon).trim().toLowerCase() !== 'content-disposition') continue;
    if (disposition !== undefined) throw malformed('a part has two Content-Disposition headers');
    disposition = line.slice(colon + 1).trim();
  }
  if (disposition === undefined || !/^form-data\s*(;|$)/i.test(disposition)) throw malformed('a part is not form-data');
  let name: string | undefined;
  let isFile = false;
  for (const match of disposition.matchAll(DISPOSITION_PARAM)) {
    const key = (match[1] ?? '').toLowerCase();
    const value = match[2] === undefined ? (match[3] ?? '') : match[2].replace(/\\(.)/g, '$1');
    if (key === 'name') {
      if (name !== undefined) throw malformed('a part names its field twice');
      name = value;
    } else if (key === 'filename' || key === 'filename*') isFile = true;
  }
  return { name: name ?? '', isFile };
}

function appendTo<T>(map: Map<string, T[]>, name: string, value: T): void {
  const list = map.get(name);
  if (list === undefined) map.set(name, [value]);
  else list.push(value);
}
