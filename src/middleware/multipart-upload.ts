import type { IncomingMessage } from 'node:http';
import type { Writable } from 'node:stream';
import type { Request, RequestHandler } from 'express';
import multer, { MulterError } from 'multer';
import { AppError, badArgument } from '../errors/app-error';
import { FILE_PARAMETERS, isParameterName, MAX_REQUEST_BYTES } from '../faceid/parameters';
import type { MultipartForm } from '../token-request/multipart-form';
import { uploadTooLarge } from './upload-gate';

/**
 * Far above what a correct request sends (12 text fields and 3 photos): anything beyond is an attack, not a
 * mistake, and is refused before it is read further.
 */
const LIMITS: multer.Options['limits'] = {
  files: FILE_PARAMETERS.length,
  fields: 24,
  parts: 24 + FILE_PARAMETERS.length,
  fieldSize: 1024,
  fieldNameSize: 64,
  fileSize: MAX_REQUEST_BYTES,
  // FaceID's names are flat: `liveness_type[0]` is refused under its own name instead of becoming an array.
  fieldNestingDepth: 0,
};

declare module 'multer' {
  interface Options {
    /** Feeds the request to busboy (multer 2.5; not yet in @types/multer). Default: `req.pipe(busboy)`. */
    streamHandler?: (req: IncomingMessage, busboy: Writable) => void;
  }
}

const FILE_NAMES: ReadonlySet<string> = new Set(FILE_PARAMETERS);

const malformed = (): AppError => new AppError(400, 'BAD_ARGUMENTS', 'the body is not well-formed multipart/form-data');

/** Every MulterError as the contract's problem answer. */
const MULTER_ERRORS: Readonly<Record<string, (error: MulterError) => AppError>> = {
  LIMIT_PART_COUNT: () => new AppError(400, 'BAD_ARGUMENTS', `at most ${LIMITS.parts} parts may be sent`),
  LIMIT_FILE_SIZE: () => uploadTooLarge(),
  LIMIT_FILE_COUNT: () => new AppError(400, 'BAD_ARGUMENTS', `at most ${LIMITS.files} files may be sent`),
  LIMIT_FIELD_KEY: () =>
    new AppError(400, 'BAD_ARGUMENTS', `a field name is too long (at most ${LIMITS.fieldNameSize} bytes)`),
  LIMIT_FIELD_VALUE: (error) => badArgument(error.field ?? '', `${error.field} is too long`),
  LIMIT_FIELD_COUNT: () => new AppError(400, 'BAD_ARGUMENTS', `at most ${LIMITS.fields} fields may be sent`),
  LIMIT_UNEXPECTED_FILE: (error) => badArgument(error.field ?? '', `${error.field} is not a file of this endpoint`),
  MISSING_FIELD_NAME: () => new AppError(400, 'BAD_ARGUMENTS', 'a part has no field name'),
  LIMIT_FIELD_NESTING: (error) => badArgument(error.field ?? '', `${error.field} is not a field of this endpoint`),
  LIMIT_FIELD_ARRAY_INDEX: (error) => badArgument(error.field ?? '', `${error.field} is not a field of this endpoint`),
  INVALID_FIELD_NAME: (error) => badArgument(error.field ?? '', `${error.field} is not a field of this endpoint`),
  STREAM_DESTROYED: () => malformed(),
};

/**
 * Reads the multipart body with multer into memory (the upload gate has reserved the memory), within the
 * limits above. A body without Content-Length is counted as it arrives: past the limit the 413 goes out at
 * once, where multer would first read the rest of a body that may never end; a file under a name the
 * endpoint does not take is refused at once too.
 */
export function multipartUpload(): RequestHandler {
  return (req, res, next) => {
    let settled = false;
    const settle = (error?: unknown): void => {
      if (settled) return;
      settled = true;
      next(error === undefined ? undefined : toAppError(error, req));
    };
    // multer reports its errors only once it has read the rest of the body; these are answered at once, and
    // the error handler then closes the connection instead of reading on.
    let parser: Writable | undefined;
    const refuseNow = (error: AppError): void => {
      if (parser !== undefined) req.unpipe(parser);
      settle(error);
    };
    let received = 0;
    const upload = multer({
      storage: multer.memoryStorage(),
      limits: LIMITS,
      fileFilter: (_req, file, accept) => {
        if (FILE_NAMES.has(file.fieldname)) return accept(null, true);
        accept(null, false);
        refuseNow(
          isParameterName(file.fieldname)
            ? badArgument(file.fieldname, `${file.fieldname} must be sent as a text field`)
            : badArgument(file.fieldname, `${file.fieldname} is not a field of this endpoint`),
        );
      },
      streamHandler: (incoming, busboy) => {
        parser = busboy;
        incoming.on('data', (chunk: Buffer) => {
          received += chunk.length;
          if (received > MAX_REQUEST_BYTES && !settled) refuseNow(uploadTooLarge());
        });
        incoming.pipe(busboy);
      },
    }).any();
    upload(req, res, settle);
  };
}

function toAppError(error: unknown, req: Request): AppError {
  if (error instanceof AppError) return error;
  if (error instanceof MulterError) return MULTER_ERRORS[error.code]?.(error) ?? malformed();
  // The client went away mid-body: nobody is left to answer, but the log line says what happened.
  if (req.destroyed && !req.complete)
    return new AppError(400, 'BAD_ARGUMENTS', 'the client closed the connection before the body was complete');
  // busboy's own refusals: a missing boundary, a malformed part header, a body that ends too early.
  return malformed();
}

/** The form as multer read it: text fields and files by name, repeats kept so that validation can refuse them. */
export function formOf(req: Request): MultipartForm {
  const fields = new Map<string, string[]>();
  for (const [name, value] of Object.entries(req.body as Record<string, string | string[]>)) {
    fields.set(name, Array.isArray(value) ? value : [value]);
  }
  const files = new Map<string, Buffer[]>();
  for (const file of (req.files ?? []) as Express.Multer.File[]) {
    files.set(file.fieldname, [...(files.get(file.fieldname) ?? []), file.buffer]);
  }
  return { fields, files };
}
