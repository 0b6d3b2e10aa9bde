import type { IncomingMessage } from 'node:http';
import proxyAddr from 'proxy-addr';
import type { AuthenticateCaller, Caller } from '../auth/authenticate-caller';
import type { Config } from '../config/load-config';

/**
 * The client's address under TRUST_PROXY, with Express's own rules (proxy-addr): forged X-Forwarded-For
 * headers count only from trusted proxies.
 */
export function clientAddressOf(trustProxy: Config['trustProxy']): (req: IncomingMessage) => string {
  const trust =
    trustProxy === true
      ? () => true
      : typeof trustProxy === 'number'
        ? (_address: string, hop: number) => hop < trustProxy
        : proxyAddr.compile(trustProxy === false ? [] : trustProxy);
  return (req) => proxyAddr(req, trust);
}

/** Who is asking, or a 401 before any budget is spent. */
export function authenticate(authenticateCaller: AuthenticateCaller, clientAddress: (req: IncomingMessage) => string) {
  return (req: IncomingMessage): Promise<Caller> => authenticateCaller(req.headers.authorization, clientAddress(req));
}
