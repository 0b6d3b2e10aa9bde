import type { IncomingMessage } from 'node:http';
import proxyAddr from 'proxy-addr';

/** Express's compiled TRUST_PROXY rule (`app.get('trust proxy fn')`). */
export type TrustProxy = (address: string, hop: number) => boolean;

/**
 * The client's address under the same TRUST_PROXY rule Express applies to its own routes: forged
 * X-Forwarded-For headers count only from trusted proxies.
 */
export function clientAddressOf(trust: TrustProxy): (req: IncomingMessage) => string {
  // proxy-addr has nothing to return once the socket is gone.
  return (req) => (proxyAddr(req, trust) as string | undefined) ?? 'unknown';
}
