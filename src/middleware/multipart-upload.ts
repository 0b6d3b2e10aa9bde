import type { IncomingMessage } from 'node:http';
import type { Writable } from 'node:stream';
import type { Request, RequestHandler } from 'express';
import multer, { MulterError } from 'multer';
import { AppError, badArgument } from '../errors/app-error';
import { FILE_PARAMETERS, isParameterName, MAX_REQUEST_BYTES } from '../faceid/parameters';
import type { MultipartForm } from '../token-request/multipart-form';
import { uploadTooLarge } from './upload-gate';

/**
 * Far above what a correct request sends (12 text fields and 3 photos at most): anything beyond is an
 * attack, not a mistake, and is refused before it is read further.
 */
const FIELD_LIMITS = {
  fields: 24,
  fieldSize: 1024,
  fieldNameSize: 64,
  fileSize: MAX_REQUEST_BYTES,
  // FaceID's names are flat: `liveness_type[0]` is refused under its own name instead of becoming an array.
  fieldNestingDepth: 0,
} as const;

/** Which parts an endpoint takes as files, and which names it knows as text fields. */
export interface UploadForm {
  files: readonly string[];
  isTextField: (name: string) => boolean;
  /** The answer for a text value over the size limit, where the endpoint has its own; else 400 naming the field. */
  tooLong?: (name: string) => AppError | undefined;
}

/** `POST /v1/biz-tokens`: FaceID's get_biz_token parameters. */
export const TOKEN_FORM: UploadForm = { files: FILE_PARAMETERS, isTextField: isParameterName };

declare module 'multer' {
  interface Options {
    /** Feeds the request to busboy (multer 2.5; not yet in @types/multer). Default: `req.pipe(busboy)`. */
    streamHandler?: (req: IncomingMessage, busboy: Writable) => void;
  }
}

const malformed = (): AppError => new AppError(400, 'BAD_ARGUMENTS', 'the body is not well-formed multipart/form-data');

type Limits = NonNullable<multer.Options['limits']> & typeof FIELD_LIMITS & { files: number; parts: number };

/** Every MulterError as the contract's problem answer. */
const MULTER_ERRORS: Readonly<Record<string, (error: MulterError, limits: Limits, form: UploadForm) => AppError>> = {
  LIMIT_PART_COUNT: (_error, limits) => new AppError(400, 'BAD_ARGUMENTS', `at most ${limits.parts} parts may be sent`),
  LIMIT_FILE_SIZE: () => uploadTooLarge(),
  LIMIT_FILE_COUNT: (_error, limits) => new AppError(400, 'BAD_ARGUMENTS', `at most ${limits.files} files may be sent`),
  LIMIT_FIELD_KEY: (_error, limits) =>
    new AppError(400, 'BAD_ARGUMENTS', `a field name is too long (at most ${limits.fieldNameSize} bytes)`),
  LIMIT_FIELD_VALUE: (error, _limits, form) =>
    form.tooLong?.(error.field ?? '') ?? badArgument(error.field ?? '', `${error.field} is too long`),
  LIMIT_FIELD_COUNT: (_error, limits) =>
    new AppError(400, 'BAD_ARGUMENTS', `at most ${limits.fields} fields may be sent`),
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
export function multipartUpload(form: UploadForm): RequestHandler {
  const fileNames: ReadonlySet<string> = new Set(form.files);
  // One file more than the endpoint takes, so that a repeated file is refused by name, not by count.
  const limits: Limits = {
    ...FIELD_LIMITS,
    files: form.files.length + 1,
    parts: FIELD_LIMITS.fields + form.files.length + 1,
  };
  return (req, res, next) => {
    let settled = false;
    const settle = (error?: unknown): void => {
      if (settled) return;
      settled = true;
      next(error === undefined ? undefined : toAppError(error, req, limits, form));
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
      limits,
      fileFilter: (_req, file, accept) => {
        if (fileNames.has(file.fieldname)) return accept(null, true);
        accept(null, false);
        refuseNow(
          form.isTextField(file.fieldname)
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

function toAppError(error: unknown, req: Request, limits: Limits, form: UploadForm): AppError {
  if (error instanceof AppError) return error;
  if (error instanceof MulterError) return MULTER_ERRORS[error.code]?.(error, limits, form) ?? malformed();
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
