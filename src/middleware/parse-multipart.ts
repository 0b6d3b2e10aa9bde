import type { Request, RequestHandler } from 'express';
import multer, { MulterError } from 'multer';
import type { Readable, Writable } from 'node:stream';
import { AppError, badArgument } from '../errors/app-error';
import { PARAMETERS, isParameterName } from '../faceid/parameters';
import type { UploadMemoryBudget } from '../limits/upload-memory-budget';
import type { MultipartForm } from '../token-request/multipart-form';

/**
 * FaceID refuses requests over 20 MB; the service refuses them first, before reading them when the
 * `Content-Length` says so, and while reading them otherwise.
 * @see ../shared/seed/App-GetBizToken.md (413 Request Entity Too Large)
 */
export const MAX_REQUEST_BYTES = 20 * 1024 * 1024;

/** The endpoint has 16 client fields at most; anything far beyond is an attack, not a mistake. */
const LIMITS = {
  fileSize: MAX_REQUEST_BYTES,
  files: 3,
  fields: 24,
  parts: 32,
  fieldSize: 1024,
  fieldNameSize: 64,
  // Brackets would make multer build nested objects; no FaceID field has them.
  fieldNestingDepth: 0,
} as const;

const tooLarge = (): AppError =>
  new AppError(413, 'PAYLOAD_TOO_LARGE', `the request is larger than ${MAX_REQUEST_BYTES} bytes`);

/** How the byte counter, which multer hands only the request, reaches the middleware that answers. */
const onTooLarge = new WeakMap<object, () => void>();

interface FilesSeen {
  seenFileFields?: Set<string>;
}

/** multer 2.5 has `streamHandler`; its type definitions do not know it yet. */
type UploadOptions = multer.Options & { streamHandler: (req: Readable, busboy: Writable) => void };

const uploadOptions: UploadOptions = {
  storage: multer.memoryStorage(),
  limits: LIMITS,
  // Refuses a wrong file part before its bytes are buffered.
  fileFilter: (req: Request & FilesSeen, file, accept) => {
    const name = file.fieldname;
    if (!isParameterName(name)) return accept(badArgument(name, `${name} is not a field of this endpoint`));
    if (PARAMETERS[name].kind !== 'file') return accept(badArgument(name, `${name} must be sent as a text field`));
    req.seenFileFields ??= new Set();
    if (req.seenFileFields.has(name)) return accept(badArgument(name, `${name} is repeated`));
    req.seenFileFields.add(name);
    accept(null, true);
  },
  // Counts the bytes as they arrive, so a body without Content-Length cannot exceed the limit either.
  streamHandler: (req: Readable, busboy: Writable) => {
    let received = 0;
    const count = (chunk: Buffer): void => {
      received += chunk.length;
      if (received > MAX_REQUEST_BYTES) {
        req.off('data', count);
        busboy.destroy(tooLarge());
        // Answer now: multer would otherwise wait for the end of a body that may never end.
        onTooLarge.get(req)?.();
      }
    };
    req.on('data', count);
    req.pipe(busboy);
  },
};
const upload = multer(uploadOptions).any();

const MULTER_PROBLEMS: Record<string, (field: string | undefined) => AppError> = {
  LIMIT_FILE_SIZE: () => tooLarge(),
  LIMIT_FILE_COUNT: () => new AppError(400, 'BAD_ARGUMENTS', `at most ${LIMITS.files} files may be sent`),
  LIMIT_PART_COUNT: () => new AppError(400, 'BAD_ARGUMENTS', `at most ${LIMITS.parts} parts may be sent`),
  LIMIT_FIELD_COUNT: () => new AppError(400, 'BAD_ARGUMENTS', `at most ${LIMITS.fields} fields may be sent`),
  LIMIT_FIELD_KEY: () => new AppError(400, 'BAD_ARGUMENTS', 'a field name is too long'),
  LIMIT_FIELD_VALUE: (field) =>
    field === undefined ? new AppError(400, 'BAD_ARGUMENTS', 'a field value is too long') : badArgument(field, `${field} is too long`),
  MISSING_FIELD_NAME: () => new AppError(400, 'BAD_ARGUMENTS', 'a part has no field name'),
};

function toAppError(error: unknown): AppError {
  if (error instanceof AppError) return error;
  if (error instanceof MulterError) {
    const known = MULTER_PROBLEMS[error.code];
    if (known !== undefined) return known(error.field);
    // Nesting, array-index and invalid-name codes: the name is not one of ours.
    return error.field === undefined
      ? new AppError(400, 'BAD_ARGUMENTS', 'a field name is not allowed')
      : badArgument(error.field, `${error.field} is not a field of this endpoint`);
  }
  // busboy's own errors: no boundary, malformed headers, a body that ends half-way.
  return new AppError(400, 'BAD_ARGUMENTS', 'the body is not well-formed multipart/form-data', { cause: error });
}

/**
 * Parses the body into `res.locals.form`, refusing what is not multipart or too large, and holding at most
 * the upload memory budget's worth of bodies at once.
 */
export function parseMultipart(budget: UploadMemoryBudget): RequestHandler {
  return async (req, res, next) => {
    if (!req.is('multipart/form-data')) throw new AppError(415, 'UNSUPPORTED_MEDIA_TYPE', 'the body must be multipart/form-data');
    const announced = Number(req.headers['content-length']);
    if (Number.isFinite(announced) && announced > MAX_REQUEST_BYTES) {
      // Refuse without reading: the connection closes so the rest of the upload is not waited for.
      res.setHeader('Connection', 'close');
      throw tooLarge();
    }
    // Held until the answer is sent (the use case keeps the photos until FaceID has them). The listener
    // comes first: a client that gives up while waiting must not keep its reservation once it is granted.
    let release: (() => void) | undefined;
    let gone = false;
    res.once('close', () => {
      gone = true;
      release?.();
    });
    try {
      release = await budget.reserve(Number.isFinite(announced) ? announced : MAX_REQUEST_BYTES);
    } catch (error) {
      res.setHeader('Connection', 'close');
      throw error;
    }
    if (gone) {
      release();
      return;
    }
    let settled = false;
    const settle = (error: AppError | undefined): void => {
      if (settled) return;
      settled = true;
      if (error === undefined) res.locals.form = toForm(req);
      next(error);
    };
    onTooLarge.set(req, () => {
      // The rest of the body is not worth reading: the connection closes after the answer.
      res.setHeader('Connection', 'close');
      settle(tooLarge());
    });
    upload(req, res, (error: unknown) => settle(error === undefined || error === null ? undefined : toAppError(error)));
  };
}

function toForm(req: Request): MultipartForm {
  const fields = new Map<string, string[]>();
  const files = new Map<string, Buffer[]>();
  let totalBytes = 0;
  const body = (req.body ?? {}) as Record<string, unknown>;
  for (const [name, value] of Object.entries(body)) {
    const values = (Array.isArray(value) ? value : [value]).map(String);
    values.forEach((text) => (totalBytes += Buffer.byteLength(text)));
    fields.set(name, values);
  }
  for (const file of (req.files ?? []) as Express.Multer.File[]) {
    totalBytes += file.size;
    files.set(file.fieldname, [...(files.get(file.fieldname) ?? []), file.buffer]);
  }
  return { fields, files, totalBytes };
}
