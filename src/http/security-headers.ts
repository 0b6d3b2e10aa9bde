import type { IncomingMessage, ServerResponse } from 'node:http';
import helmet from 'helmet';
import type { FrontStep } from './front-step';

/**
 * helmet's default headers, computed once: with no per-request options (no CSP nonces) they are the same
 * for every answer, and setting them from a list costs a fraction of running helmet's fourteen middleware
 * on every request.
 */
export function securityHeaders(): FrontStep {
  const headers = new Map<string, string | number | readonly string[]>();
  const collector = {
    setHeader: (name: string, value: string | number | readonly string[]) => headers.set(name, value),
    removeHeader: (name: string) => headers.delete(name),
  };
  let ran = false;
  helmet()({} as IncomingMessage, collector as unknown as ServerResponse, () => {
    ran = true;
  });
  // helmet answers synchronously; if a future version did not, serving without its headers would be silent.
  if (!ran || headers.size === 0) throw new Error('helmet did not produce its headers synchronously');
  const list = [...headers];
  return (_req, res, next) => {
    for (const [name, value] of list) res.setHeader(name, value);
    next();
  };
}
