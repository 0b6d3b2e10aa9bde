import { createHmac, createPublicKey, createSecretKey, type KeyObject } from 'node:crypto';
import { createRemoteJWKSet, type JWTVerifyResult, errors as joseErrors, jwtVerify } from 'jose';
import type { Logger } from 'pino';
import type { Config } from '../config/load-config';
import { ConfigError } from '../config/load-config';
import { AppError } from '../errors/app-error';

/** Who is asking, as the rest of the service may know it: never the raw user id or IP. */
export interface Caller {
  /** Pseudonymous and stable: HMAC of the JWT `sub` (or of the IP under AUTH_MODE=none). Keys limits and logs. */
  id: string;
  /** The `uuid` sent to FaceID for comparison_type 0; undefined when the client sends its own. */
  uuid: string | undefined;
  /**
   * The JWT `sub` as sent, for the operator's own records (the verification record and webhook name the user
   * by it); undefined under AUTH_MODE=none. Never logged.
   */
  subject: string | undefined;
  /** The JWT `scope` claim, split on spaces as OAuth 2.0 writes it. */
  scopes: ReadonlySet<string>;
}

/** `clientAddress` is asked only when the address is the caller's identity (AUTH_MODE=none). */
export type AuthenticateCaller = (authorization: string | undefined, clientAddress: () => string) => Promise<Caller>;

const JWKS_UNAVAILABLE = 'the signing keys could not be fetched';
const NO_SCOPES: ReadonlySet<string> = new Set();
const ASYMMETRIC_ALGORITHMS = [
  'RS256',
  'RS384',
  'RS512',
  'PS256',
  'PS384',
  'PS512',
  'ES256',
  'ES384',
  'ES512',
  'EdDSA',
  'Ed25519',
];

/** Caps on fetching the JWKS, so a slow identity provider cannot hold requests for long. */
const JWKS_OPTIONS = { timeoutDuration: 3_000, cooldownDuration: 30_000, cacheMaxAge: 10 * 60_000 };

/** Builds the caller check once at start-up; a bad key fails the start, not the first request. */
export function createCallerAuthenticator(auth: Config['auth'], log: Logger): AuthenticateCaller {
  const salt = createSecretKey(Buffer.from(auth.uuidSalt, 'utf8'));
  const pseudonym = (value: string): string => createHmac('sha256', salt).update(value).digest('hex');

  if (auth.mode === 'none') {
    return async (_authorization, clientAddress) => ({
      id: pseudonym(`ip:${clientAddress()}`),
      uuid: undefined,
      subject: undefined,
      scopes: NO_SCOPES,
    });
  }

  const verify = verifier(auth);
  const unauthenticated = (detail: string): AppError => new AppError(401, 'UNAUTHENTICATED', detail);

  return async (authorization) => {
    // The scheme name is case-insensitive (RFC 9110 section 11.1).
    const token = /^Bearer ([A-Za-z0-9_\-.]+)$/i.exec(authorization ?? '')?.[1];
    if (token === undefined) throw unauthenticated('send a JWT as `Authorization: Bearer <token>`');
    try {
      const { payload } = await verify(token);
      if (typeof payload.sub !== 'string' || payload.sub.length === 0)
        throw unauthenticated('the token has no subject');
      const id = pseudonym(`sub:${payload.sub}`);
      const scopes = typeof payload.scope === 'string' ? new Set(payload.scope.split(' ').filter(Boolean)) : NO_SCOPES;
      return { id, uuid: id, subject: payload.sub, scopes };
    } catch (error) {
      if (error instanceof AppError) throw error;
      const reason = rejectionReason(error);
      if (reason === JWKS_UNAVAILABLE) log.warn({ err: errorCode(error) }, 'JWKS unreachable');
      throw unauthenticated(reason);
    }
  };
}

/** The verification chosen once at start-up: which key, which algorithms, which claims. */
function verifier(auth: Config['auth']): (token: string) => Promise<JWTVerifyResult> {
  const options = (algorithms: string[]) => ({
    algorithms,
    issuer: auth.issuer,
    audience: auth.audience,
    clockTolerance: auth.clockToleranceSeconds,
    requiredClaims: ['sub', 'exp'],
  });
  if (auth.jwtSecret !== undefined) {
    const secret = new TextEncoder().encode(auth.jwtSecret);
    return (token) => jwtVerify(token, secret, options(['HS256']));
  }
  if (auth.jwksUrl !== undefined) {
    const keySet = createRemoteJWKSet(new URL(auth.jwksUrl), JWKS_OPTIONS);
    return (token) => jwtVerify(token, keySet, options(ASYMMETRIC_ALGORITHMS));
  }
  if (auth.publicKeyPem !== undefined) {
    const key = createPublicKey(auth.publicKeyPem);
    const algorithms = algorithmsFor(key);
    return (token) => jwtVerify(token, key, options(algorithms));
  }
  throw new ConfigError(['AUTH_MODE: `jwt` needs a key source']);
}

/** Only the algorithms of the key's own family: a key never verifies a token of another kind. */
function algorithmsFor(key: KeyObject): string[] {
  switch (key.asymmetricKeyType) {
    case 'rsa':
      return ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512'];
    case 'rsa-pss':
      return ['PS256', 'PS384', 'PS512'];
    case 'ec': {
      const curve = key.asymmetricKeyDetails?.namedCurve;
      return curve === 'prime256v1' ? ['ES256'] : curve === 'secp384r1' ? ['ES384'] : ['ES512'];
    }
    case 'ed25519':
      return ['EdDSA', 'Ed25519'];
    default:
      throw new ConfigError([`AUTH_JWT_PUBLIC_KEY: unsupported key type ${key.asymmetricKeyType ?? 'unknown'}`]);
  }
}

function rejectionReason(error: unknown): string {
  if (error instanceof joseErrors.JWTExpired) return 'the token has expired';
  if (error instanceof joseErrors.JWTClaimValidationFailed) return `the token's ${error.claim} claim is not accepted`;
  if (error instanceof joseErrors.JOSEAlgNotAllowed) return "the token's algorithm is not accepted";
  if (error instanceof joseErrors.JWKSNoMatchingKey) return 'no signing key matches the token';
  if (error instanceof joseErrors.JWSSignatureVerificationFailed) return "the token's signature is not valid";
  if (error instanceof joseErrors.JWKSTimeout || error instanceof joseErrors.JWKSInvalid) return JWKS_UNAVAILABLE;
  // jose raises its own errors for every token problem; anything else came from fetching the JWKS.
  if (!(error instanceof joseErrors.JOSEError)) return JWKS_UNAVAILABLE;
  return 'the token is not a valid JWT';
}

function errorCode(error: unknown): string {
  const { code, cause } = (error ?? {}) as { code?: unknown; cause?: { code?: unknown } };
  if (typeof code === 'string') return code;
  if (typeof cause?.code === 'string') return cause.code;
  return error instanceof Error ? error.name : 'unknown';
}
