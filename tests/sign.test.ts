import { createHmac, createSecretKey } from 'node:crypto';
import { decodeSign, freshSign, SIGN_VERSION, sign } from '../src/faceid/sign';

/**
 * FaceID request signing, checked against the seed's test vectors and formula.
 * @see ../shared/seed/App-Authentication.md
 */
const KEY = 'ak_test_0123456789';
const SECRET = 'sk_test_secret_abcdefghijklmnop';

/** The seed's two test vectors, verbatim. */
const VECTORS = [
  {
    expireTime: 1700000100,
    currentTime: 1700000000,
    random: '0123456789',
    sign: '0K3YzlOLya7Py9vm06qnx3kN3j9hPWFrX3Rlc3RfMDEyMzQ1Njc4OSZiPTE3MDAwMDAxMDAmYz0xNzAwMDAwMDAwJmQ9MDEyMzQ1Njc4OQ==',
  },
  {
    expireTime: 0,
    currentTime: 1700000000,
    random: '42',
    sign: 'dD0wuhCPEjnxGSJ1ZxNyhkGUM2RhPWFrX3Rlc3RfMDEyMzQ1Njc4OSZiPTAmYz0xNzAwMDAwMDAwJmQ9NDI=',
  },
];

/** An independent reading of a sign: the bytes after the 20-byte digest are the raw string. */
function rawOf(text: string): { digest: Buffer; raw: string } {
  const bytes = Buffer.from(text, 'base64');
  return { digest: bytes.subarray(0, 20), raw: bytes.subarray(20).toString('utf8') };
}

describe('sign (the seed formula)', () => {
  test.each(VECTORS)(
    'when the seed vector with expire_time $expireTime and random $random is signed, then the seed sign comes out',
    ({ expireTime, currentTime, random, sign: expected }) => {
      expect(sign({ apiKey: KEY, apiSecret: SECRET, expireTime, currentTime, random })).toBe(expected);
    },
  );

  test.each(VECTORS)(
    'when the secret is given as a key made from its UTF-8 bytes (expire $expireTime), then the seed vector comes out the same',
    (vector) => {
      const secretKey = createSecretKey(Buffer.from(SECRET, 'utf8'));
      expect(
        sign({
          apiKey: KEY,
          apiSecret: secretKey,
          expireTime: vector.expireTime,
          currentTime: vector.currentTime,
          random: vector.random,
        }),
      ).toBe(vector.sign);
    },
  );

  test('when the seed vectors are decoded, then they give back key, times and random with leading zeros kept', () => {
    const first = decodeSign(VECTORS[0]!.sign);
    expect(first).toMatchObject({ apiKey: KEY, expireTime: 1700000100, currentTime: 1700000000, random: '0123456789' });
    expect(first?.digestMatches(SECRET)).toBe(true);
    const second = decodeSign(VECTORS[1]!.sign);
    expect(second).toMatchObject({ apiKey: KEY, expireTime: 0, currentTime: 1700000000, random: '42' });
    expect(second?.digestMatches(SECRET)).toBe(true);
  });

  test('when the sign version is asked for, then it is hmac_sha1', () => {
    expect(SIGN_VERSION).toBe('hmac_sha1');
  });
});

describe('freshSign', () => {
  test('when a sign is made now, then its times are UNIX seconds (not milliseconds) and it expires 60 s later', () => {
    const before = Math.floor(Date.now() / 1000);
    const made = freshSign(KEY, SECRET);
    const after = Math.floor(Date.now() / 1000);
    const decoded = decodeSign(made);
    expect(decoded).toBeDefined();
    expect(decoded!.apiKey).toBe(KEY);
    expect(decoded!.currentTime).toBeGreaterThanOrEqual(before);
    expect(decoded!.currentTime).toBeLessThanOrEqual(after);
    expect(decoded!.expireTime).toBe(decoded!.currentTime + 60);
    expect(decoded!.digestMatches(SECRET)).toBe(true);
  });

  test('when a sign is made at a given millisecond instant, then current_time is that instant floored to seconds', () => {
    const decoded = decodeSign(freshSign(KEY, SECRET, 1_700_000_000_999));
    expect(decoded?.currentTime).toBe(1_700_000_000);
    expect(decoded?.expireTime).toBe(1_700_000_060);
  });

  test('when signs are made, then random is at most 10 decimal digits and the raw string follows a=&b=&c=&d=', () => {
    for (let i = 0; i < 200; i++) {
      const made = freshSign(KEY, SECRET);
      const { digest, raw } = rawOf(made);
      const match = /^a=([^&]+)&b=(\d+)&c=(\d+)&d=(\d+)$/.exec(raw);
      expect(match).not.toBeNull();
      expect(match![1]).toBe(KEY);
      expect(match![4]!.length).toBeLessThanOrEqual(10);
      // The digest is HMAC-SHA1(secret, raw), computed here independently.
      expect(digest.equals(createHmac('sha1', SECRET).update(raw, 'utf8').digest())).toBe(true);
    }
  });

  test('when signs are made, then they are standard Base64 on one line (no URL-safe alphabet, no line breaks)', () => {
    for (let i = 0; i < 200; i++) {
      const made = freshSign(KEY, SECRET);
      expect(made).toMatch(/^[A-Za-z0-9+/]+={0,2}$/);
      expect(made).not.toMatch(/[\r\n\s_-]/);
      // Re-encoding the decoded bytes with the standard alphabet gives the very same text.
      expect(Buffer.from(made, 'base64').toString('base64')).toBe(made);
    }
  });

  test('when two signs are made one after the other, then they differ', () => {
    const first = freshSign(KEY, SECRET);
    const second = freshSign(KEY, SECRET);
    expect(second).not.toBe(first);
    expect(decodeSign(second)?.random).not.toBe(decodeSign(first)?.random);
  });
});

describe('decodeSign', () => {
  test('when a sign is decoded, then it round-trips to the same fields and sign', () => {
    const input = {
      apiKey: 'key-x',
      apiSecret: 'secret-y',
      expireTime: 1800000060,
      currentTime: 1800000000,
      random: '0000000007',
    };
    const decoded = decodeSign(sign(input));
    expect(decoded).toMatchObject({
      apiKey: 'key-x',
      expireTime: 1800000060,
      currentTime: 1800000000,
      random: '0000000007',
    });
    expect(
      sign({
        apiKey: decoded!.apiKey,
        apiSecret: 'secret-y',
        expireTime: decoded!.expireTime,
        currentTime: decoded!.currentTime,
        random: decoded!.random,
      }),
    ).toBe(sign(input));
  });

  test('when the digest is checked with a wrong secret, then it does not match', () => {
    const decoded = decodeSign(freshSign(KEY, SECRET));
    expect(decoded?.digestMatches(SECRET)).toBe(true);
    expect(decoded?.digestMatches('wrong')).toBe(false);
    expect(decoded?.digestMatches(`${SECRET}x`)).toBe(false);
    expect(decoded?.digestMatches('')).toBe(false);
  });

  test('when the raw string was tampered with, then the digest no longer matches', () => {
    const { digest, raw } = rawOf(freshSign(KEY, SECRET));
    const tampered = Buffer.concat([digest, Buffer.from(raw.replace(/&b=\d+/, '&b=9999999999'), 'utf8')]).toString(
      'base64',
    );
    expect(decodeSign(tampered)?.digestMatches(SECRET)).toBe(false);
  });

  test.each([
    ['an empty string', ''],
    ['text that is not Base64', 'not a sign at all!'],
    ['URL-safe Base64', `${freshSign(KEY, SECRET).replace(/\+/g, '-').replace(/\//g, '_')}-_`],
    ['Base64 of fewer than 21 bytes', Buffer.alloc(20, 1).toString('base64')],
    [
      'a digest followed by text that is no raw string',
      Buffer.concat([Buffer.alloc(20, 1), Buffer.from('hello world')]).toString('base64'),
    ],
    [
      'a raw string with an 11-digit random',
      Buffer.concat([Buffer.alloc(20), Buffer.from('a=k&b=1&c=0&d=12345678901')]).toString('base64'),
    ],
    [
      'a raw string without the key',
      Buffer.concat([Buffer.alloc(20), Buffer.from('a=&b=1&c=0&d=1')]).toString('base64'),
    ],
    [
      'a raw string with non-numeric times',
      Buffer.concat([Buffer.alloc(20), Buffer.from('a=k&b=x&c=0&d=1')]).toString('base64'),
    ],
    ['a sign with a line break inside', `${freshSign(KEY, SECRET).slice(0, 20)}\n${freshSign(KEY, SECRET).slice(20)}`],
  ])('when %s is decoded, then the answer is undefined', (_what, text) => {
    expect(decodeSign(text)).toBeUndefined();
  });
});
