import { createHmac, type KeyObject, randomInt } from 'node:crypto';

/**
 * FaceID request signing.
 * @see ../shared/seed/App-Authentication.md (App-鉴权说明): raw = "a=<key>&b=<expire>&c=<now>&d=<random>",
 *      sign = standard Base64(HMAC-SHA1(secret, raw) || raw). Times are UNIX seconds, never milliseconds.
 */
export interface SignInput {
  apiKey: string;
  /** The secret as text, or as a key made from its UTF-8 bytes once at start-up (the same HMAC). */
  apiSecret: string | KeyObject;
  expireTime: number;
  currentTime: number;
  /** Unsigned decimal integer of at most 10 digits, kept as text so leading zeros survive. */
  random: string;
}

export const SIGN_VERSION = 'hmac_sha1';

/**
 * A short validity rather than `expire_time = 0`: the current Chinese page no longer documents the
 * single-use form, and a fresh sign is made for every attempt anyway.
 * @see ../shared/seed/App-Authentication.md
 */
const SIGN_VALIDITY_SECONDS = 60;

export function sign(input: SignInput): string {
  const raw = `a=${input.apiKey}&b=${input.expireTime}&c=${input.currentTime}&d=${input.random}`;
  const digest = createHmac('sha1', input.apiSecret).update(raw, 'utf8').digest();
  return Buffer.concat([digest, Buffer.from(raw, 'utf8')]).toString('base64');
}

/** A new sign for one upstream attempt: a retry must never reuse one. */
export function freshSign(apiKey: string, apiSecret: string | KeyObject, nowMs: number = Date.now()): string {
  const currentTime = Math.floor(nowMs / 1000);
  return sign({
    apiKey,
    apiSecret,
    currentTime,
    expireTime: currentTime + SIGN_VALIDITY_SECONDS,
    // crypto.randomInt: a cryptographic source; 10 digits at most.
    random: String(randomInt(0, 10_000_000_000)),
  });
}

export interface DecodedSign {
  apiKey: string;
  expireTime: number;
  currentTime: number;
  random: string;
  digestMatches: (apiSecret: string) => boolean;
}

/** The inverse, for the sandbox: undefined when the text is not a sign at all. */
export function decodeSign(text: string): DecodedSign | undefined {
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(text)) return undefined;
  const bytes = Buffer.from(text, 'base64');
  if (bytes.length <= 20) return undefined;
  const digest = bytes.subarray(0, 20);
  const raw = bytes.subarray(20).toString('utf8');
  const match = /^a=([^&]+)&b=(\d{1,12})&c=(\d{1,12})&d=(\d{1,10})$/.exec(raw);
  if (match === null) return undefined;
  const [, apiKey = '', expire = '', current = '', random = ''] = match;
  return {
    apiKey,
    expireTime: Number(expire),
    currentTime: Number(current),
    random,
    digestMatches: (apiSecret) => createHmac('sha1', apiSecret).update(raw, 'utf8').digest().equals(digest),
  };
}
