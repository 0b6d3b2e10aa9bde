import type supertest from 'supertest';
import type { MegliveContent } from '../../src/sandbox/sandbox-server';
import { postToken, signToken, type TestService, type TokenForm, validForm } from './test-service';

/**
 * Small helpers for the verification flow (CONTRACT section 7), through the HTTP surface only: a token for
 * a user, a package from the sandbox, a `POST /v1/verifications`.
 */

export const VERIFICATIONS_PATH = '/v1/verifications';

/** `vf_` + a ULID (Crockford base32, 26 characters). */
export const VERIFICATION_ID = /^vf_[0-9A-HJKMNP-TV-Z]{26}$/;

/** The only fields of the app's answer (CONTRACT 7.1), sorted. */
export const APP_VIEW_KEYS = ['biz_token', 'reason', 'verdict', 'verification_id', 'verified_at'];

/** `Authorization` header value for a user (and optional `scope` claim). */
export async function bearer(sub: string, scope?: string): Promise<string> {
  return `Bearer ${await signToken(scope === undefined ? { sub } : { sub, scope })}`;
}

export interface IssuedToken {
  bizToken: string;
  expiresAt: string;
  /** The `Authorization` header used to issue it. */
  authorization: string;
}

/**
 * `POST /v1/biz-tokens` as `sub` (the valid meglive form unless another is given); fails the test unless
 * it answers 201 with a biz_token.
 */
export async function issueToken(
  target: Pick<TestService, 'http'>,
  sub: string,
  form: TokenForm = validForm(),
): Promise<IssuedToken> {
  const authorization = await bearer(sub);
  const response = await postToken(target, form, { Authorization: authorization });
  if (response.status !== 201 || typeof response.body?.biz_token !== 'string') {
    throw new Error(`issuing a biz_token failed: ${response.status} ${JSON.stringify(response.body)}`);
  }
  const body = response.body as { biz_token: string; expires_at: string };
  return { bizToken: body.biz_token, expiresAt: body.expires_at, authorization };
}

/** A package the sandbox's verify accepts for this biz_token, made in-process (outcome SUCCESS by default). */
export function makePackage(
  target: Pick<TestService, 'sandbox'>,
  bizToken: string,
  content: Partial<Omit<MegliveContent, 'bizToken'>> = {},
): Buffer {
  return target.sandbox.megliveData({ outcome: 'SUCCESS', ...content, bizToken });
}

export interface VerificationForm {
  /** Sent as the text field `biz_token` unless undefined. */
  bizToken?: string | undefined;
  /** Sent as the file `meglive_data` unless undefined. */
  megliveData?: Buffer | undefined;
  /** Further (or repeated) text fields, in order. */
  fields?: Array<[string, string]>;
  /** Further (or repeated) files, in order. */
  files?: Array<[string, Buffer]>;
}

/**
 * `POST /v1/verifications` as multipart. `authorization`: the header value; `''` sends none; a user name
 * without `Bearer ` is turned into a JWT for that `sub`.
 */
export async function postVerification(
  target: Pick<TestService, 'http'>,
  authorization: string,
  form: VerificationForm,
  headers: Record<string, string> = {},
): Promise<supertest.Response> {
  const auth =
    authorization === '' || authorization.startsWith('Bearer ') ? authorization : await bearer(authorization);
  let request = target
    .http()
    .post(VERIFICATIONS_PATH)
    .set(auth === '' ? headers : { ...headers, Authorization: auth });
  if (form.bizToken !== undefined) request = request.field('biz_token', form.bizToken);
  for (const [name, value] of form.fields ?? []) request = request.field(name, value);
  if (form.megliveData !== undefined) {
    request = request.attach('meglive_data', form.megliveData, {
      filename: 'meglive_data',
      contentType: 'application/octet-stream',
    });
  }
  for (const [name, bytes] of form.files ?? []) {
    request = request.attach(name, bytes, { filename: name, contentType: 'application/octet-stream' });
  }
  return request;
}

/**
 * The whole app flow for one user: a token, a package with the given content, the verification. Returns
 * the token and the verification's response (not checked).
 */
export async function verifyOnce(
  target: Pick<TestService, 'http' | 'sandbox'>,
  sub: string,
  content: Partial<Omit<MegliveContent, 'bizToken'>> = {},
  form: TokenForm = validForm(),
): Promise<{ token: IssuedToken; response: supertest.Response }> {
  const token = await issueToken(target, sub, form);
  const response = await postVerification(target, token.authorization, {
    bizToken: token.bizToken,
    megliveData: makePackage(target, token.bizToken, content),
  });
  return { token, response };
}

/** `GET /v1/verifications/{id}` (or the path given) with the header value given (see postVerification). */
export async function getVerification(
  target: Pick<TestService, 'http'>,
  authorization: string,
  pathOrId: string,
): Promise<supertest.Response> {
  const auth =
    authorization === '' || authorization.startsWith('Bearer ') ? authorization : await bearer(authorization);
  const path = pathOrId.startsWith('/') ? pathOrId : `${VERIFICATIONS_PATH}/${pathOrId}`;
  const request = target.http().get(path);
  return auth === '' ? request : request.set('Authorization', auth);
}

/** Every field CONTRACT 7.3 lists for `data` (without `image_best`), sorted. */
export const DATA_FIELDS = [
  'attack_result',
  'biz_no',
  'biz_token',
  'comparison_type',
  'faceid_request_id',
  'liveness_type',
  'reason',
  'result_code',
  'result_message',
  'user',
  'verdict',
  'verification',
  'verification_id',
  'verified_at',
];
