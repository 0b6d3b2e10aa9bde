import { createUploadBufferPool } from '../src/limits/upload-buffer-pool';

const MB = 1024 * 1024;

/** Identity, compared without jest printing megabytes of buffer when it fails. */
const same = (a: Buffer, b: Buffer): boolean => a === b;

/**
 * The pool behind the upload reader: reuse, and its bound. Safety against reuse while FaceID still reads a
 * buffer is proven end to end in faceid-upstream.test.ts ("photo buffers").
 */
describe('upload buffer pool', () => {
  test('when a buffer is given back, then the next upload of a nearby size gets the same buffer', () => {
    const pool = createUploadBufferPool(32 * MB);
    const first = pool.take(7_200_000);
    expect(first.length).toBeGreaterThanOrEqual(7_200_000);
    pool.give(first);
    expect(same(pool.take(7_300_000), first)).toBe(true);
  });

  test('when keeping a given-back buffer would pass the limit, then it is not kept', () => {
    const pool = createUploadBufferPool(12 * MB);
    const held = pool.take(8 * MB);
    const other = pool.take(8 * MB);
    // 8 MB still leased plus 8 MB idle would pass 12 MB.
    pool.give(other);
    expect(same(pool.take(8 * MB), other)).toBe(false);
    pool.give(held);
  });

  test('when a new size needs room, then idle buffers of other sizes are dropped rather than held beside it', () => {
    const pool = createUploadBufferPool(20 * MB);
    const large = pool.take(12 * MB);
    pool.give(large);
    const small = pool.take(10 * MB);
    pool.give(small);
    // The 12 MB buffer made room for the 10 MB one; a second 12 MB upload gets a fresh buffer.
    expect(same(pool.take(12 * MB), large)).toBe(false);
  });

  test('when a body is small, then it gets its own buffer of exactly its size, never a pooled one', () => {
    const pool = createUploadBufferPool(32 * MB);
    const small = pool.take(10_000);
    expect(small.length).toBe(10_000);
    pool.give(small);
    expect(same(pool.take(10_000), small)).toBe(false);
  });
});
