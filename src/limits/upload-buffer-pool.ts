/**
 * Reuses the buffers uploads are read into. A fresh multi-megabyte buffer per request costs its page faults,
 * and its memory comes back only when the garbage collector gets to it, so under load the process held far
 * more than the bodies in flight. Idle buffers are kept only while leased and idle ones together stay
 * within `limitBytes` (the upload memory budget, which already bounds the leased ones).
 */
export interface UploadBufferPool {
  /** A buffer of at least `size` bytes, to be given back once nothing reads it any more. */
  take(size: number): Buffer;
  give(buffer: Buffer): void;
}

/** Smaller bodies are allocated as they come, from Node's own slabs. */
const SMALLEST_POOLED = 64 * 1024;

/** Sizes are rounded up to a quarter of their power of two, so a buffer fits many nearby sizes (≤ 25 % spare). */
function sizeClassOf(size: number): number {
  const step = 2 ** (Math.floor(Math.log2(size)) - 2);
  return Math.ceil(size / step) * step;
}

export function createUploadBufferPool(limitBytes: number): UploadBufferPool {
  const idle = new Map<number, Buffer[]>();
  let idleBytes = 0;
  let leasedBytes = 0;

  /** Idle buffers of other sizes make room for a new one rather than stay held beside it. */
  const evictFor = (bytes: number): void => {
    for (const [sizeClass, list] of idle) {
      while (list.length > 0 && leasedBytes + idleBytes + bytes > limitBytes) {
        list.pop();
        idleBytes -= sizeClass;
      }
    }
  };

  return {
    take(size) {
      if (size < SMALLEST_POOLED) return Buffer.allocUnsafe(size);
      const sizeClass = sizeClassOf(size);
      const reused = idle.get(sizeClass)?.pop();
      if (reused !== undefined) idleBytes -= reused.length;
      else evictFor(sizeClass);
      const buffer = reused ?? Buffer.allocUnsafeSlow(sizeClass);
      leasedBytes += buffer.length;
      return buffer;
    },
    give(buffer) {
      if (buffer.length < SMALLEST_POOLED) return;
      leasedBytes -= buffer.length;
      // Kept only while leased and idle buffers together stay within the limit; otherwise left to the GC.
      if (leasedBytes + idleBytes + buffer.length > limitBytes) return;
      const list = idle.get(buffer.length);
      if (list === undefined) idle.set(buffer.length, [buffer]);
      else list.push(buffer);
      idleBytes += buffer.length;
    },
  };
}
