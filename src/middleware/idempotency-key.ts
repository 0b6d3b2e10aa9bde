import type { IncomingHttpHeaders } from 'node:http';
import { badArgument } from '../errors/app-error';

/** 1 to 255 printable ASCII characters. @see CONTRACT section 1 */
const VALID_KEY = /^[\x20-\x7E]{1,255}$/;

/** Reads and checks `Idempotency-Key` before the body is read. */
export function idempotencyKeyOf(headers: IncomingHttpHeaders): string | undefined {
  const raw = headers['idempotency-key'];
  if (raw === undefined) return undefined;
  if (typeof raw !== 'string' || !VALID_KEY.test(raw)) {
    throw badArgument('Idempotency-Key', 'Idempotency-Key must be 1 to 255 printable ASCII characters');
  }
  return raw;
}
