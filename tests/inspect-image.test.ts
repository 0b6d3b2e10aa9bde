import { randomBytes } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { imageSize } from 'image-size';
import { type ImageInspection, inspectImage, MAX_IMAGE_SIDE } from '../src/images/inspect-image';
import { bmp, gif1x1, jpeg, png, textNamedJpg, truncated } from './fixtures/images';

function expectUnsupported(result: ImageInspection): void {
  expect(result).toMatchObject({ ok: false, problem: 'unsupported-format' });
}

/** Offset of the first occurrence of marker 0xFF `code` after SOI, found by walking segments. */
function jpegSegmentOffset(buf: Buffer, code: number): number {
  let pos = 2;
  while (pos + 4 <= buf.length && buf[pos] === 0xff) {
    if (buf[pos + 1] === code) return pos;
    pos += 2 + buf.readUInt16BE(pos + 2);
  }
  throw new Error(`marker ff${code.toString(16)} not found`);
}

function pngChunk(type: string, data: Buffer): Buffer {
  const chunk = Buffer.alloc(12 + data.length);
  chunk.writeUInt32BE(data.length, 0);
  chunk.write(type, 4, 'latin1');
  data.copy(chunk, 8);
  chunk.writeUInt32BE(crc32(chunk.subarray(4, 8 + data.length)), 8 + data.length);
  return chunk;
}

/** Deterministic PRNG (mulberry32) so a fuzz failure can be reproduced. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('inspectImage', () => {
  describe('valid images', () => {
    it.each([
      ['jpeg', 1, 1, jpeg],
      ['jpeg', 33, 17, jpeg],
      ['png', 1, 1, png],
      ['png', 33, 17, png],
      ['bmp', 1, 1, bmp],
      ['bmp', 33, 17, bmp],
    ] as const)(
      'when a real %s of %ix%i is given, then it is accepted with that format and size',
      (format, width, height, build) => {
        const bytes = build(width, height);
        // The fixture itself is checked by an independent parser, so the test cannot agree with a wrong fixture.
        expect(imageSize(bytes)).toMatchObject({ width, height });
        expect(inspectImage(bytes)).toEqual({ ok: true, format, width, height });
      },
    );

    it('when the bytes come as a plain Uint8Array view, then they are inspected without error', () => {
      const bytes = png(5, 3);
      const view = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      expect(inspectImage(view as Buffer)).toEqual({ ok: true, format: 'png', width: 5, height: 3 });
    });

    it('when a phone appended data after the JPEG EOI or the PNG IEND, then the image is still accepted', () => {
      const tail = Buffer.from('vendor trailer \xff\xd8\xff garbage', 'latin1');
      expect(inspectImage(Buffer.concat([jpeg(16, 16), tail]))).toMatchObject({ ok: true, format: 'jpeg' });
      expect(inspectImage(Buffer.concat([png(16, 16), tail]))).toMatchObject({ ok: true, format: 'png' });
    });

    it('when a JPEG has further segments and a second scan after the first scan (as progressive JPEGs do), then it is accepted', () => {
      const base = jpeg(16, 16);
      const sosStart = jpegSegmentOffset(base, 0xda);
      const sosHeader = base.subarray(sosStart, sosStart + 2 + base.readUInt16BE(sosStart + 2));
      const firstScan = base.subarray(0, base.length - 2); // without EOI
      const comment = Buffer.from([0xff, 0xfe, 0x00, 0x05, 0x68, 0x69, 0x21]);
      const secondScanData = Buffer.from([0x12, 0xff, 0x00, 0x34, 0xff, 0xd0, 0x56, 0xff, 0xff, 0xd9]); // stuffing, RST0, fill, EOI
      const bytes = Buffer.concat([firstScan, comment, sosHeader, secondScanData]);
      expect(inspectImage(bytes)).toEqual({ ok: true, format: 'jpeg', width: 16, height: 16 });
    });

    it('when a BMP is stored top-down (negative height), then it is accepted with the absolute height', () => {
      const bytes = bmp(7, 5);
      bytes.writeInt32LE(-5, 22);
      expect(inspectImage(bytes)).toEqual({ ok: true, format: 'bmp', width: 7, height: 5 });
    });

    it('when a BMP leaves its file-size field at zero, then it is accepted', () => {
      const bytes = bmp(7, 5);
      bytes.writeUInt32LE(0, 2);
      expect(inspectImage(bytes)).toMatchObject({ ok: true, format: 'bmp' });
    });
  });

  describe('truncated and broken images', () => {
    it.each([
      ['JPEG', () => jpeg(32, 32)],
      ['PNG', () => png(32, 32)],
      ['BMP', () => bmp(32, 32)],
    ] as const)('when a %s upload is cut off at 60%%, then it is rejected as unsupported-format', (_name, build) => {
      expectUnsupported(inspectImage(truncated(build())));
    });

    it.each([
      ['JPEG', () => jpeg(9, 9)],
      ['PNG', () => png(9, 9)],
      ['BMP', () => bmp(9, 9)],
    ] as const)('when a %s is cut off at any byte, then every prefix is rejected', (_name, build) => {
      const full = build();
      const accepted: number[] = [];
      for (let length = 0; length < full.length; length++) {
        if (inspectImage(full.subarray(0, length)).ok) accepted.push(length);
      }
      expect(accepted).toEqual([]);
    });

    it('when a JPEG is missing its EOI marker, then it is rejected', () => {
      const full = jpeg(16, 16);
      expect(full.subarray(-2)).toEqual(Buffer.from([0xff, 0xd9]));
      const result = inspectImage(full.subarray(0, full.length - 2));
      expectUnsupported(result);
      expect(result).toMatchObject({ detail: expect.stringContaining('EOI') });
    });

    it('when a JPEG scan comes before any frame header, then it is rejected', () => {
      const full = jpeg(16, 16);
      const sof = jpegSegmentOffset(full, 0xc0);
      const sofEnd = sof + 2 + full.readUInt16BE(sof + 2);
      const withoutFrame = Buffer.concat([full.subarray(0, sof), full.subarray(sofEnd)]);
      expectUnsupported(inspectImage(withoutFrame));
    });

    it('when a JPEG frame header declares a zero width, then it is rejected', () => {
      const bytes = jpeg(16, 16);
      bytes.writeUInt16BE(0, jpegSegmentOffset(bytes, 0xc0) + 7);
      expectUnsupported(inspectImage(bytes));
    });

    it('when a JPEG segment length points past the end of the file, then it is rejected', () => {
      const bytes = jpeg(16, 16);
      bytes.writeUInt16BE(0xfff0, 4); // APP0 length
      expectUnsupported(inspectImage(bytes));
    });

    it('when one byte of a PNG is flipped, then the CRC mismatch is rejected', () => {
      const bytes = png(16, 16);
      const idatData = 8 + 25 + 8; // signature, IHDR chunk, IDAT length+type
      expect(bytes.toString('latin1', idatData - 4, idatData)).toBe('IDAT');
      bytes[idatData + 3] ^= 0x01;
      const result = inspectImage(bytes);
      expectUnsupported(result);
      expect(result).toMatchObject({ detail: expect.stringContaining('CRC') });
    });

    it('when a PNG has no IDAT chunk, then it is rejected', () => {
      const full = png(4, 4);
      const signatureAndHeader = full.subarray(0, 8 + 25);
      const bytes = Buffer.concat([signatureAndHeader, pngChunk('IEND', Buffer.alloc(0))]);
      expectUnsupported(inspectImage(bytes));
    });

    it('when a PNG does not start with IHDR, then it is rejected', () => {
      const full = png(4, 4);
      const bytes = Buffer.concat([full.subarray(0, 8), pngChunk('tEXt', Buffer.from('a\0b')), full.subarray(8)]);
      expectUnsupported(inspectImage(bytes));
    });

    it('when a BMP declares a larger file size than was received, then it is rejected', () => {
      const bytes = bmp(8, 8);
      bytes.writeUInt32LE(bytes.length + 1, 2);
      expectUnsupported(inspectImage(bytes));
    });

    it('when a BMP has an unknown DIB header size or bit depth, then it is rejected', () => {
      const badHeader = bmp(8, 8);
      badHeader.writeUInt32LE(64, 14);
      expectUnsupported(inspectImage(badHeader));
      const badDepth = bmp(8, 8);
      badDepth.writeUInt16LE(2, 28);
      expectUnsupported(inspectImage(badDepth));
    });

    it('when a BMP pixel-data offset lies beyond the file, then it is rejected', () => {
      const bytes = bmp(8, 8);
      bytes.writeUInt32LE(bytes.length + 10, 10);
      bytes.writeUInt32LE(0, 2);
      expectUnsupported(inspectImage(bytes));
    });
  });

  describe('other formats', () => {
    it('when a text file named .jpg is uploaded, then it is rejected as unsupported-format', () => {
      expectUnsupported(inspectImage(textNamedJpg()));
    });

    it('when a real GIF is uploaded, then it is rejected as unsupported-format', () => {
      const gif = gif1x1();
      expect(imageSize(gif)).toMatchObject({ type: 'gif', width: 1, height: 1 });
      expectUnsupported(inspectImage(gif));
    });

    it('when a WebP header is uploaded, then it is rejected as unsupported-format', () => {
      expectUnsupported(inspectImage(Buffer.from('RIFF\x24\x00\x00\x00WEBPVP8 ', 'latin1')));
    });

    it('when the buffer is empty, then it is rejected as unsupported-format', () => {
      expect(inspectImage(Buffer.alloc(0))).toEqual({ ok: false, problem: 'unsupported-format', detail: 'empty file' });
    });

    it('when only a magic number arrives, then it is rejected as unsupported-format', () => {
      for (const magic of [
        [0xff, 0xd8],
        [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a],
        [0x42, 0x4d],
      ]) {
        expectUnsupported(inspectImage(Buffer.from(magic)));
      }
    });
  });

  describe('size limit', () => {
    it('when a JPEG is 5000 px wide, then it is rejected as too-large', () => {
      expect(inspectImage(jpeg(5000, 8))).toMatchObject({
        ok: false,
        problem: 'too-large',
        detail: expect.stringContaining('5000x8'),
      });
    });

    it('when a PNG is 4097 px tall, then it is rejected as too-large', () => {
      expect(inspectImage(png(1, 4097))).toMatchObject({ ok: false, problem: 'too-large' });
    });

    it.each([
      ['jpeg', MAX_IMAGE_SIDE, 8, jpeg],
      ['jpeg', 8, MAX_IMAGE_SIDE, jpeg],
      ['png', MAX_IMAGE_SIDE, 1, png],
      ['png', 1, MAX_IMAGE_SIDE, png],
      ['bmp', MAX_IMAGE_SIDE, 1, bmp],
      ['bmp', 1, MAX_IMAGE_SIDE, bmp],
    ] as const)('when a %s is exactly %ix%i, then it is accepted', (format, width, height, build) => {
      expect(inspectImage(build(width, height))).toEqual({ ok: true, format, width, height });
    });

    it.each([
      ['png', MAX_IMAGE_SIDE + 1, 1, png],
      ['bmp', MAX_IMAGE_SIDE + 1, 1, bmp],
      ['bmp', 1, MAX_IMAGE_SIDE + 1, bmp],
    ] as const)('when a %s is %ix%i, then it is rejected as too-large', (_format, width, height, build) => {
      expect(inspectImage(build(width, height))).toMatchObject({ ok: false, problem: 'too-large' });
    });

    it('when the limit is read, then it is 4096 px per side', () => {
      expect(MAX_IMAGE_SIDE).toBe(4096);
    });
  });

  describe('robustness', () => {
    /** Plain checks instead of expect() per iteration: thousands of expect() calls dominate the run time. */
    function isWellFormed(result: ImageInspection): boolean {
      if (result.ok) {
        return (
          ['jpeg', 'png', 'bmp'].includes(result.format) &&
          Number.isInteger(result.width) &&
          Number.isInteger(result.height) &&
          result.width > 0 &&
          result.height > 0 &&
          result.width <= MAX_IMAGE_SIDE &&
          result.height <= MAX_IMAGE_SIDE
        );
      }
      return ['unsupported-format', 'too-large'].includes(result.problem) && typeof result.detail === 'string';
    }

    /** Inspects the input; returns a description of the failure, or undefined when all is well. */
    function failure(bytes: Buffer): string | undefined {
      try {
        return isWellFormed(inspectImage(bytes)) ? undefined : `malformed result for ${bytes.toString('hex')}`;
      } catch (error) {
        return `threw ${String(error)} for ${bytes.toString('hex')}`;
      }
    }

    it('when 2000 random buffers (some behind a valid magic number) are inspected, then none throws', () => {
      // Contents come from randomBytes (a per-byte PRNG call is slow under jest); a failure message
      // carries the offending bytes in hex, so it can still be reproduced.
      const random = prng(0xfaced);
      const failures: string[] = [];
      const magics = [
        [],
        [0xff, 0xd8],
        [0xff, 0xd8, 0xff],
        [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a],
        [0x42, 0x4d],
      ];
      for (let n = 0; n < 2000; n++) {
        const magic = magics[n % magics.length] ?? [];
        const bytes = randomBytes(magic.length + Math.floor(random() * 300));
        Buffer.from(magic).copy(bytes);
        for (let i = magic.length; i < bytes.length; i++) {
          // Bias towards 0xFF and 0x00, the bytes that steer marker and length parsing.
          const b = bytes[i] ?? 0;
          if (b < 40) bytes[i] = 0xff;
          else if (b < 80) bytes[i] = 0x00;
        }
        const problem = failure(bytes);
        if (problem !== undefined) failures.push(problem);
      }
      expect(failures).toEqual([]);
    });

    it('when valid fixtures are mutated 3000 times (byte flips, cuts, splices), then none throws', () => {
      const random = prng(0xbeef);
      const failures: string[] = [];
      const seeds = [jpeg(16, 16), png(16, 16), bmp(16, 16), jpeg(9, 9), png(3, 2), bmp(3, 2)];
      const pick = (n: number): number => Math.floor(random() * n);
      for (let n = 0; n < 3000; n++) {
        const seed = seeds[n % seeds.length] ?? Buffer.alloc(0);
        let bytes = Buffer.from(seed);
        const kind = n % 3;
        if (kind === 0) {
          for (let k = 1 + pick(4); k > 0; k--) bytes[pick(bytes.length)] = pick(256);
        } else if (kind === 1) {
          bytes = bytes.subarray(0, pick(bytes.length + 1));
        } else {
          const at = pick(bytes.length);
          const insert = Buffer.from(Array.from({ length: 1 + pick(8) }, () => (random() < 0.5 ? 0xff : pick(256))));
          bytes = Buffer.concat([bytes.subarray(0, at), insert, bytes.subarray(at + pick(8))]);
        }
        const problem = failure(bytes);
        if (problem !== undefined) failures.push(problem);
      }
      expect(failures).toEqual([]);
    });

    it('when a large JPEG is full of 0xFF00 stuffing, then it is inspected in linear time', () => {
      const header = jpeg(8, 8);
      const sos = jpegSegmentOffset(header, 0xda);
      const scanStart = sos + 2 + header.readUInt16BE(sos + 2);
      const entropy = Buffer.alloc(8 * 1024 * 1024, Buffer.from([0xff, 0x00])); // FF 00 FF 00 ...
      const bytes = Buffer.concat([header.subarray(0, scanStart), entropy, Buffer.from([0xff, 0xd9])]);
      const started = process.hrtime.bigint();
      expect(inspectImage(bytes)).toMatchObject({ ok: true, format: 'jpeg' });
      expect(Number(process.hrtime.bigint() - started) / 1e6).toBeLessThan(1000);
    });
  });
});
