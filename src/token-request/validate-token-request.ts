import type { Config } from '../config/load-config';
import { AppError, badArgument, missingArgument } from '../errors/app-error';
import {
  type ComparisonType,
  FILE_PARAMETERS,
  type FileParameterName,
  fitsTypes,
  isParameterName,
  isRequired,
  type LivenessType,
  PARAMETERS,
  type ParameterName,
  valueProblem,
} from '../faceid/parameters';
import { type ImageFormat, inspectImage, MAX_IMAGE_SIDE } from '../images/inspect-image';
import { checkIdcardNumber } from './idcard-number';
import type { MultipartForm } from './multipart-form';

/** A request that passed every local rule: what the use case forwards, and nothing else. */
export interface TokenRequest {
  comparisonType: ComparisonType;
  livenessType: LivenessType;
  /** Client text fields in the table's order, normalized (an ID number's x upper-cased). */
  fields: Array<[ParameterName, string]>;
  images: Array<{ name: FileParameterName; bytes: Buffer; format: ImageFormat }>;
}

export interface ValidationPolicy {
  policy: Config['policy'];
  /** Under JWT auth the service derives `uuid`; only `AUTH_MODE=none` lets the client send it. */
  clientSendsUuid: boolean;
}

/**
 * Fields a client can never set: the sign is the service's, and the rest would let an app weaken
 * verification. `verbose` and `return_faces` only shape FaceID's answer, which the app never sees.
 */
const SERVER_OWNED: ReadonlySet<ParameterName> = new Set([
  'sign',
  'sign_version',
  'security_level',
  'force_compare',
  'verbose',
  'return_faces',
]);

const REPLACEMENT_CHARACTER = '\uFFFD';

/** The parameter table in its order, listed once rather than on every request. */
const PARAMETER_ENTRIES = Object.entries(PARAMETERS) as ReadonlyArray<
  [ParameterName, (typeof PARAMETERS)[ParameterName]]
>;

/** Whether the service, not the client, sets a field: the list above, and `uuid` unless AUTH_MODE=none. */
export const isServerOwned = (name: ParameterName, clientSendsUuid: boolean): boolean =>
  SERVER_OWNED.has(name) || (name === 'uuid' && !clientSendsUuid);

/** Checks a parsed form against the seed's rules, the policy and the local extras. Throws the first AppError. */
export function validateTokenRequest(form: MultipartForm, { policy, clientSendsUuid }: ValidationPolicy): TokenRequest {
  for (const [name, values] of form.fields) {
    if (!isParameterName(name)) throw badArgument(name, `${name} is not a field of this endpoint`);
    if (isServerOwned(name, clientSendsUuid))
      throw badArgument(name, `${name} is set by the service and may not be sent`);
    if (PARAMETERS[name].kind === 'file') throw badArgument(name, `${name} must be sent as a file`);
    if (values.length > 1) throw badArgument(name, `${name} is repeated`);
    // The parser turns bytes that are not UTF-8 into U+FFFD; forwarding that would silently alter, say, a name.
    if (values[0]?.includes(REPLACEMENT_CHARACTER) === true) throw badArgument(name, `${name} is not valid UTF-8`);
  }
  for (const [name, files] of form.files) {
    if (!isParameterName(name)) throw badArgument(name, `${name} is not a field of this endpoint`);
    if (PARAMETERS[name].kind !== 'file') throw badArgument(name, `${name} must be sent as a text field`);
    if (files.length > 1) throw badArgument(name, `${name} is repeated`);
  }

  const text = (name: ParameterName): string | undefined => form.fields.get(name)?.[0];
  const comparisonType = pickType('comparison_type', text('comparison_type'), policy.comparisonTypes);
  const livenessType = pickType('liveness_type', text('liveness_type'), policy.livenessTypes);

  const fields: TokenRequest['fields'] = [
    ['comparison_type', comparisonType],
    ['liveness_type', livenessType],
  ];
  for (const [name, rule] of PARAMETER_ENTRIES) {
    if (isServerOwned(name, clientSendsUuid) || name === 'comparison_type' || name === 'liveness_type') continue;
    const present = rule.kind === 'file' ? form.files.has(name) : form.fields.has(name);
    if (!present) {
      if (isRequired(rule, comparisonType, livenessType)) throw missingArgument(name);
      continue;
    }
    if (!fitsTypes(rule, comparisonType, livenessType)) {
      throw badArgument(
        name,
        `${name} is not allowed with comparison_type ${comparisonType} and liveness_type ${livenessType}`,
      );
    }
    if (rule.kind === 'file') continue;
    const value = text(name) ?? '';
    const problem = valueProblem(rule, value);
    if (problem !== undefined) throw badArgument(name, `${name} ${problem}`);
    fields.push([name, name === 'idcard_number' ? normalizeIdcardNumber(value) : value]);
  }

  const images: TokenRequest['images'] = [];
  // FaceID names "the first image that fails", so the order of this loop is the table's.
  for (const name of FILE_PARAMETERS) {
    const bytes = form.files.get(name)?.[0];
    if (bytes === undefined) continue;
    const inspection = inspectImage(bytes);
    if (!inspection.ok) {
      throw inspection.problem === 'too-large'
        ? new AppError(400, 'INVALID_IMAGE_SIZE', `${name} is wider or taller than ${MAX_IMAGE_SIDE} pixels`, {
            param: name,
          })
        : new AppError(400, 'IMAGE_ERROR_UNSUPPORTED_FORMAT', `${name} is not a complete JPEG, PNG or BMP image`, {
            param: name,
          });
    }
    images.push({ name, bytes, format: inspection.format });
  }
  return { comparisonType, livenessType, fields, images };
}

function pickType<T extends string>(
  name: 'comparison_type' | 'liveness_type',
  value: string | undefined,
  allowed: readonly T[],
): T {
  if (value === undefined) throw missingArgument(name);
  const problem = valueProblem(PARAMETERS[name] as Parameters<typeof valueProblem>[0], value);
  if (problem !== undefined) throw badArgument(name, `${name} ${problem}`);
  if (!(allowed as readonly string[]).includes(value)) {
    throw badArgument(name, `${name} "${value}" is not enabled on this service (allowed: ${allowed.join(', ')})`);
  }
  return value as T;
}

function normalizeIdcardNumber(value: string): string {
  const check = checkIdcardNumber(value, new Date());
  if (!check.ok) throw badArgument('idcard_number', `idcard_number ${check.problem}`);
  return check.normalized;
}
