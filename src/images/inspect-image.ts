/**
 * Structural check of an uploaded photo before it is forwarded to Megvii FaceID.
 *
 * FaceID only understands JPEG, PNG and BMP, and charges / fails slowly on junk, so we reject
 * anything else here, cheaply. The format is decided from the bytes alone (magic numbers): file
 * names and declared content types come from the client and prove nothing.
 *
 * "Structurally complete" means every length field stays inside the buffer and the file has its
 * terminator (JPEG EOI, PNG IEND, BMP pixel array), so truncated uploads are caught here and not
 * by FaceID. Pixel data is never decoded.
 *
 * Every read below is bounds-checked first, so this never throws; the work is O(n) and the image
 * is never copied (only subarray views and readUInt* calls).
 */
import { crc32 } from 'node:zlib';

export type ImageFormat = 'jpeg' | 'png' | 'bmp';

export type ImageInspection =
  | { ok: true; format: ImageFormat; width: number; height: number }
  | { ok: false; problem: 'unsupported-format' | 'too-large'; detail: string };

/** Largest accepted width or height, in pixels. */
export const MAX_IMAGE_SIDE = 4096;

type Structure = { ok: true; format: ImageFormat; width: number; height: number } | { ok: false; detail: string };

function broken(detail: string): { ok: false; detail: string } {
  return { ok: false, detail };
}

export function inspectImage(bytes: Buffer): ImageInspection {
  // Callers are typed, but a plain Uint8Array (or worse) must not make readUInt* throw.
  const input: unknown = bytes;
  if (!(input instanceof Uint8Array)) {
    return { ok: false, problem: 'unsupported-format', detail: 'input is not a byte buffer' };
  }
  // A view over the same memory, not a copy.
  const buf = Buffer.isBuffer(input) ? input : Buffer.from(input.buffer, input.byteOffset, input.byteLength);

  let structure: Structure;
  if (startsWith(buf, JPEG_SOI)) {
    structure = checkJpeg(buf);
  } else if (startsWith(buf, PNG_SIGNATURE)) {
    structure = checkPng(buf);
  } else if (startsWith(buf, BMP_MAGIC)) {
    structure = checkBmp(buf);
  } else {
    return {
      ok: false,
      problem: 'unsupported-format',
      detail: buf.length === 0 ? 'empty file' : 'not a JPEG, PNG or BMP image',
    };
  }

  if (!structure.ok) {
    return { ok: false, problem: 'unsupported-format', detail: structure.detail };
  }
  const { format, width, height } = structure;
  if (width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE) {
    return {
      ok: false,
      problem: 'too-large',
      detail: `${format} image is ${width}x${height} px; each side must be at most ${MAX_IMAGE_SIDE} px`,
    };
  }
  return { ok: true, format, width, height };
}

const JPEG_SOI = [0xff, 0xd8];
const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
const BMP_MAGIC = [0x42, 0x4d]; // 'BM'

function startsWith(buf: Buffer, magic: readonly number[]): boolean {
  if (buf.length < magic.length) return false;
  for (let i = 0; i < magic.length; i++) {
    if (buf[i] !== magic[i]) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// JPEG
// ---------------------------------------------------------------------------------------------

/** SOF0..SOF15 minus DHT (C4), JPG (C8) and DAC (CC), which share the range but are not frames. */
function isStartOfFrame(marker: number): boolean {
  return marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc;
}

/** Markers that stand alone (no length field): TEM and RST0-7. SOI/EOI are handled separately. */
function isStandaloneMarker(marker: number): boolean {
  return marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7);
}

function checkJpeg(buf: Buffer): Structure {
  const len = buf.length;
  let pos = 2; // after SOI
  let width = 0;
  let height = 0;
  let haveFrame = false;
  let scans = 0;

  for (;;) {
    // Between segments the next byte must start a marker. Decoders such as libjpeg skip stray
    // bytes here with a warning; we are stricter and reject, since it signals a damaged file.
    if (pos >= len) return broken('JPEG ends before its EOI marker');
    if (buf[pos] !== 0xff) return broken('JPEG has stray bytes where a marker was expected');
    // Any marker may be preceded by 0xFF fill bytes.
    while (pos < len && buf[pos] === 0xff) pos++;
    if (pos >= len) return broken('JPEG ends before its EOI marker');
    const marker = buf[pos];
    const markerStart = pos - 1;
    pos++;

    if (marker === 0xd9) {
      // EOI: only a real image if a frame and at least one scan came first. Trailing bytes (phone
      // vendors append data after EOI) are tolerated.
      if (scans === 0) return broken('JPEG ends before any image data');
      return { ok: true, format: 'jpeg', width, height };
    }
    if (marker === 0x00 || marker === 0xd8) return broken(`JPEG has an invalid marker at offset ${markerStart}`);
    if (isStandaloneMarker(marker)) continue;

    // Every other marker has a 2-byte big-endian length that counts itself but not the marker.
    if (pos + 2 > len) return broken('JPEG segment header is cut off');
    const segmentLength = buf.readUInt16BE(pos);
    if (segmentLength < 2) return broken(`JPEG segment at offset ${markerStart} has an invalid length`);
    const segmentEnd = pos + segmentLength;
    if (segmentEnd > len) return broken(`JPEG segment at offset ${markerStart} runs past the end of the file`);

    if (isStartOfFrame(marker)) {
      // Hierarchical JPEGs carry several frames; the first one gives the image size.
      if (!haveFrame) {
        // P(1) Y(2) X(2) Nf(1), then 3 bytes per component.
        if (segmentLength < 8) return broken('JPEG frame header is too short');
        height = buf.readUInt16BE(pos + 3);
        width = buf.readUInt16BE(pos + 5);
        const components = buf[pos + 7];
        if (components === 0 || segmentLength < 8 + 3 * components) return broken('JPEG frame header is malformed');
        // Height 0 (size deferred to a later DNL marker) is legal but practically unused; treated
        // as broken rather than parsing DNL.
        if (width === 0 || height === 0) return broken('JPEG frame header declares a zero width or height');
        haveFrame = true;
      }
      pos = segmentEnd;
      continue;
    }

    if (marker !== 0xda) {
      pos = segmentEnd; // APPn, COM, DQT, DHT, DRI, ...: contents irrelevant here
      continue;
    }

    // SOS: the frame header has to be known before any scan can be decoded.
    if (!haveFrame) return broken('JPEG scan starts before the frame header');
    scans++;
    // Skip the entropy-coded data that follows the scan header. Inside it, 0xFF is followed by
    // 0x00 (byte stuffing), RST0-7 (restart markers) or more 0xFF fill; anything else is the next
    // marker (EOI, or DHT/SOS/... of the next scan in a progressive JPEG).
    let i = segmentEnd;
    for (;;) {
      i = buf.indexOf(0xff, i); // native scan, keeps this linear and fast
      if (i < 0 || i + 1 >= len) return broken('JPEG image data is cut off before the EOI marker');
      const next = buf[i + 1];
      if (next === 0x00 || (next >= 0xd0 && next <= 0xd7)) {
        i += 2;
      } else if (next === 0xff) {
        i += 1;
      } else {
        break;
      }
    }
    pos = i;
  }
}

// ---------------------------------------------------------------------------------------------
// PNG
// ---------------------------------------------------------------------------------------------

/** Allowed bit depths per colour type (PNG spec, table 11.1). */
const PNG_BIT_DEPTHS: Readonly<Record<number, readonly number[]>> = {
  0: [1, 2, 4, 8, 16], // greyscale
  2: [8, 16], // truecolour
  3: [1, 2, 4, 8], // indexed
  4: [8, 16], // greyscale + alpha
  6: [8, 16], // truecolour + alpha
};

const PNG_MAX_UINT31 = 0x7fffffff;

function chunkTypeAt(buf: Buffer, offset: number): string {
  return buf.toString('latin1', offset, offset + 4);
}

function isChunkTypeByte(b: number): boolean {
  return (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a);
}

function checkPng(buf: Buffer): Structure {
  const len = buf.length;
  let pos = PNG_SIGNATURE.length;
  let width = 0;
  let height = 0;
  let colourType = -1;
  let sawPalette = false;
  let sawImageData = false;

  for (let index = 0; ; index++) {
    // length(4) type(4) data(length) crc(4)
    if (pos + 12 > len) return broken('PNG ends before its IEND chunk');
    const dataLength = buf.readUInt32BE(pos);
    if (dataLength > PNG_MAX_UINT31) return broken(`PNG chunk at offset ${pos} has an invalid length`);
    const dataStart = pos + 8;
    const dataEnd = dataStart + dataLength;
    if (dataEnd + 4 > len) return broken(`PNG chunk at offset ${pos} runs past the end of the file`);
    for (let k = pos + 4; k < dataStart; k++) {
      if (!isChunkTypeByte(buf[k])) return broken(`PNG chunk at offset ${pos} has an invalid type`);
    }
    const type = chunkTypeAt(buf, pos + 4);
    // CRC covers type + data; a mismatch means the upload was damaged in transit.
    if (crc32(buf.subarray(pos + 4, dataEnd)) !== buf.readUInt32BE(dataEnd)) {
      return broken(`PNG chunk ${type} at offset ${pos} fails its CRC check`);
    }

    if (index === 0) {
      if (type !== 'IHDR' || dataLength !== 13) return broken('PNG does not start with a valid IHDR chunk');
      width = buf.readUInt32BE(dataStart);
      height = buf.readUInt32BE(dataStart + 4);
      const bitDepth = buf[dataStart + 8];
      colourType = buf[dataStart + 9];
      const compression = buf[dataStart + 10];
      const filter = buf[dataStart + 11];
      const interlace = buf[dataStart + 12];
      if (width === 0 || height === 0 || width > PNG_MAX_UINT31 || height > PNG_MAX_UINT31) {
        return broken('PNG header declares an invalid width or height');
      }
      const depths = PNG_BIT_DEPTHS[colourType];
      if (depths === undefined || !depths.includes(bitDepth))
        return broken('PNG header has an invalid colour type or bit depth');
      if (compression !== 0 || filter !== 0 || interlace > 1)
        return broken('PNG header has an unknown compression, filter or interlace method');
    } else if (type === 'IHDR') {
      return broken('PNG has more than one IHDR chunk');
    } else if (type === 'PLTE') {
      sawPalette = true;
    } else if (type === 'IDAT') {
      sawImageData = true;
    } else if (type === 'IEND') {
      if (dataLength !== 0) return broken('PNG IEND chunk is not empty');
      if (!sawImageData) return broken('PNG has no IDAT chunk');
      if (colourType === 3 && !sawPalette) return broken('indexed-colour PNG has no PLTE chunk');
      // Anything after IEND is ignored by decoders; tolerated.
      return { ok: true, format: 'png', width, height };
    }
    pos = dataEnd + 4;
  }
}

// ---------------------------------------------------------------------------------------------
// BMP
// ---------------------------------------------------------------------------------------------

/** BITMAPCOREHEADER, BITMAPINFOHEADER, V2, V3, V4, V5. OS/2 2.x (64) and others are not accepted. */
const BMP_DIB_HEADER_SIZES = new Set([12, 40, 52, 56, 108, 124]);
const BMP_BITS_PER_PIXEL = new Set([1, 4, 8, 16, 24, 32]);
const BMP_FILE_HEADER_SIZE = 14;

const BI_RGB = 0;
const BI_RLE8 = 1;
const BI_RLE4 = 2;
const BI_BITFIELDS = 3;
const BI_ALPHABITFIELDS = 6;

function checkBmp(buf: Buffer): Structure {
  const len = buf.length;
  if (len < BMP_FILE_HEADER_SIZE + 4) return broken('BMP header is cut off');
  const declaredFileSize = buf.readUInt32LE(2);
  const pixelOffset = buf.readUInt32LE(10);
  const dibSize = buf.readUInt32LE(14);

  if (!BMP_DIB_HEADER_SIZES.has(dibSize)) return broken('BMP has an unknown DIB header size');
  const headersEnd = BMP_FILE_HEADER_SIZE + dibSize;
  if (headersEnd > len) return broken('BMP header is cut off');
  // Some writers leave the file size at 0; when it is set it must be honoured.
  if (declaredFileSize !== 0 && declaredFileSize > len) return broken('BMP is shorter than its declared file size');
  if (pixelOffset < headersEnd || pixelOffset > len) return broken('BMP pixel data offset is outside the file');

  let width: number;
  let signedHeight: number;
  let planes: number;
  let bitsPerPixel: number;
  let compression: number;
  if (dibSize === 12) {
    // BITMAPCOREHEADER: unsigned 16-bit sizes, always bottom-up, never compressed.
    width = buf.readUInt16LE(18);
    signedHeight = buf.readUInt16LE(20);
    planes = buf.readUInt16LE(22);
    bitsPerPixel = buf.readUInt16LE(24);
    compression = BI_RGB;
  } else {
    width = buf.readInt32LE(18);
    signedHeight = buf.readInt32LE(22); // negative = rows stored top-down
    planes = buf.readUInt16LE(26);
    bitsPerPixel = buf.readUInt16LE(28);
    compression = buf.readUInt32LE(30);
  }
  if (width <= 0 || signedHeight === 0) return broken('BMP declares an invalid width or height');
  if (planes !== 1) return broken('BMP declares an invalid number of colour planes');
  if (!BMP_BITS_PER_PIXEL.has(bitsPerPixel)) return broken('BMP has an unsupported bit depth');
  const height = Math.abs(signedHeight);

  if (compression === BI_RGB || compression === BI_BITFIELDS || compression === BI_ALPHABITFIELDS) {
    if (compression !== BI_RGB && bitsPerPixel !== 16 && bitsPerPixel !== 32) {
      return broken('BMP bit-field compression needs 16 or 32 bits per pixel');
    }
    // Uncompressed rows are padded to 4 bytes; the whole pixel array must be present. Plain
    // float arithmetic is exact up to 2^53 and only ever compared with the buffer length.
    const rowStride = Math.floor((bitsPerPixel * width + 31) / 32) * 4;
    if (pixelOffset + rowStride * height > len) return broken('BMP pixel data is cut off');
  } else if (compression === BI_RLE8 || compression === BI_RLE4) {
    // Run-length data has no fixed size; require the right depth, bottom-up rows, and some data.
    if (bitsPerPixel !== (compression === BI_RLE8 ? 8 : 4) || signedHeight < 0) {
      return broken('BMP run-length compression does not match its bit depth');
    }
    if (pixelOffset >= len) return broken('BMP pixel data is missing');
  } else {
    return broken('BMP uses an unsupported compression method');
  }

  return { ok: true, format: 'bmp', width, height };
}
