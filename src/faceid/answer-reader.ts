/**
 * Reads one HTTP/1.1 response (RFC 9112) from the bytes of a connection: status, framing (Content-Length,
 * chunked, or until the connection closes) and a body of bounded size. Only what a JSON answer to a POST
 * needs: interim 1xx answers are skipped, obsolete line folding and conflicting lengths are refused.
 */

/** More than enough for FaceID's headers; a longer head is a broken upstream. */
const MAX_HEAD_BYTES = 16 * 1024;
const MAX_CHUNK_LINE_BYTES = 1024;
const HEAD_END = Buffer.from('\r\n\r\n', 'latin1');
const LINE_END = Buffer.from('\r\n', 'latin1');
const STATUS_LINE = /^HTTP\/1\.([01]) ([1-9]\d\d)(?: [^\r\n]*)?$/;
const HEADER_LINE = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*$/;

export type ReadStep =
  /** Waiting for more bytes. */
  | 'more'
  /** The whole answer is read; `status`, `body` and `reusable` hold it. */
  | 'done'
  /** The body grew past the limit: the answer is not worth reading further. */
  | 'too-large'
  /** Not HTTP/1.1 as a server may send it. */
  | 'malformed'
  /** The connection ended before the answer did. */
  | 'cut-short';

type Stage = 'head' | 'length' | 'chunk-size' | 'chunk-data' | 'chunk-end' | 'trailer' | 'until-close' | 'done';

export class AnswerReader {
  status = 0;
  /** Whether the connection may carry another request once this answer is read. */
  reusable = true;
  private stage: Stage = 'head';
  private pending: Buffer | undefined;
  private remaining = 0;
  private readonly parts: Buffer[] = [];
  private size = 0;

  constructor(private readonly maxBodyBytes: number) {}

  get body(): Buffer {
    return this.parts.length === 1 ? (this.parts[0] as Buffer) : Buffer.concat(this.parts, this.size);
  }

  /** The next bytes of the connection. */
  push(chunk: Buffer): ReadStep {
    let bytes = this.pending === undefined ? chunk : Buffer.concat([this.pending, chunk]);
    this.pending = undefined;
    for (;;) {
      const step = this.step(bytes);
      if (typeof step !== 'number') return step;
      bytes = bytes.subarray(step);
      if (this.stage === 'done') {
        // Bytes after the answer were never asked for: the connection is not trusted with another request.
        if (bytes.length > 0) this.reusable = false;
        return 'done';
      }
      if (bytes.length === 0) return 'more';
    }
  }

  /** The connection has ended: an answer framed by the end is complete, every other one is cut short. */
  end(): ReadStep {
    if (this.stage !== 'until-close' && this.stage !== 'done') return 'cut-short';
    this.stage = 'done';
    return 'done';
  }

  /** Consumes a prefix of `bytes` and gives its length, or a final step; keeps an incomplete line for later. */
  private step(bytes: Buffer): number | ReadStep {
    switch (this.stage) {
      case 'head':
        return this.readHead(bytes);
      case 'length':
      case 'chunk-data':
      case 'until-close': {
        const taken = this.stage === 'until-close' ? bytes.length : Math.min(this.remaining, bytes.length);
        if (!this.keep(bytes.subarray(0, taken))) return 'too-large';
        if (this.stage === 'until-close') return taken;
        this.remaining -= taken;
        if (this.remaining === 0) this.stage = this.stage === 'length' ? 'done' : 'chunk-end';
        return taken;
      }
      case 'chunk-end':
        if (bytes.length < 2) return this.wait(bytes, 2);
        if (bytes[0] !== 0x0d || bytes[1] !== 0x0a) return 'malformed';
        this.stage = 'chunk-size';
        return 2;
      case 'chunk-size':
      case 'trailer':
        return this.readLine(bytes);
      case 'done':
        return 0;
    }
  }

  private readHead(bytes: Buffer): number | ReadStep {
    const end = bytes.indexOf(HEAD_END);
    if (end === -1) return this.wait(bytes, MAX_HEAD_BYTES);
    if (end > MAX_HEAD_BYTES) return 'malformed';
    const lines = bytes.toString('latin1', 0, end).split('\r\n');
    const status = STATUS_LINE.exec(lines[0] ?? '');
    if (status === null) return 'malformed';
    const code = Number(status[2]);
    // An interim answer (100 Continue, 103 Early Hints) comes before the real one. @see RFC 9110 §15.2
    if (code < 200) return code === 101 ? 'malformed' : end + 4;
    this.status = code;
    let length: string | undefined;
    let chunked = false;
    let framedByTransferEncoding = false;
    let close = status[1] === '0';
    for (let index = 1; index < lines.length; index += 1) {
      const header = HEADER_LINE.exec(lines[index] as string);
      if (header === null) return 'malformed';
      const name = (header[1] as string).toLowerCase();
      const value = header[2] as string;
      if (name === 'content-length') {
        if (!/^\d{1,15}$/.test(value) || (length !== undefined && length !== value)) return 'malformed';
        length = value;
      } else if (name === 'transfer-encoding') {
        framedByTransferEncoding = true;
        chunked = /(?:^|,)[ \t]*chunked[ \t]*$/i.test(value);
      } else if (name === 'connection') {
        const options = value.toLowerCase().split(',').map((option) => option.trim());
        if (options.includes('close')) close = true;
        else if (status[1] === '0' && options.includes('keep-alive')) close = false;
      }
    }
    // Both framings at once is how responses are split or smuggled; an encoding other than chunked last runs
    // to the close. @see RFC 9112 §6.3
    if (framedByTransferEncoding && length !== undefined) return 'malformed';
    // Transfer-Encoding in an HTTP/1.0 answer is faulty framing: read it, but never trust the connection again.
    // @see RFC 9112 §6.1
    this.reusable = !close && !(framedByTransferEncoding && status[1] === '0');
    if (code === 204 || code === 304) this.stage = 'done';
    else if (framedByTransferEncoding) this.stage = chunked ? 'chunk-size' : 'until-close';
    else if (length !== undefined) {
      this.remaining = Number(length);
      this.stage = this.remaining === 0 ? 'done' : 'length';
    } else this.stage = 'until-close';
    if (this.stage === 'until-close') this.reusable = false;
    return end + 4;
  }

  /** A chunk-size line (`1a;ext=1`) or a trailer line; an empty trailer line ends the answer. */
  private readLine(bytes: Buffer): number | ReadStep {
    const end = bytes.indexOf(LINE_END);
    if (end === -1) return this.wait(bytes, MAX_CHUNK_LINE_BYTES);
    if (end > MAX_CHUNK_LINE_BYTES) return 'malformed';
    if (this.stage === 'trailer') {
      if (end === 0) this.stage = 'done';
      return end + 2;
    }
    const size = /^([0-9A-Fa-f]{1,8})[ \t]*(?:;.*)?$/.exec(bytes.toString('latin1', 0, end));
    if (size === null) return 'malformed';
    this.remaining = parseInt(size[1] as string, 16);
    this.stage = this.remaining === 0 ? 'trailer' : 'chunk-data';
    return end + 2;
  }

  /** Keeps an incomplete piece for the next bytes, as long as it stays under `limit`. */
  private wait(bytes: Buffer, limit: number): ReadStep {
    if (bytes.length > limit) return 'malformed';
    // Socket chunks are never reused by Node: keeping a view of one is safe.
    this.pending = bytes;
    return 'more';
  }

  private keep(piece: Buffer): boolean {
    if (piece.length === 0) return true;
    this.size += piece.length;
    if (this.size > this.maxBodyBytes) return false;
    this.parts.push(piece);
    return true;
  }
}
