/**
 * PRC resident ID numbers (GB 11643-1999): 6-digit region, 8-digit birth date, 3-digit sequence, and a
 * MOD 11-2 check character. Checked locally so that a typo fails fast and costs no FaceID call.
 */
const WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2] as const;
const CHECK_CHARACTERS = '10X98765432';
/** GB 11643 birth dates start in the 19th century; nobody verifying today was born before 1900. */
const EARLIEST_BIRTH_YEAR = 1900;

export type IdcardNumberCheck = { ok: true; normalized: string } | { ok: false; problem: string };

export function checkIdcardNumber(text: string, today: Date = new Date()): IdcardNumberCheck {
  if (!/^\d{17}[\dXx]$/.test(text)) {
    return { ok: false, problem: 'must be 17 digits followed by a digit or X' };
  }
  const normalized = text.toUpperCase();
  const year = Number(normalized.slice(6, 10));
  const month = Number(normalized.slice(10, 12));
  const day = Number(normalized.slice(12, 14));
  const birth = new Date(Date.UTC(year, month - 1, day));
  const isCalendarDate =
    birth.getUTCFullYear() === year && birth.getUTCMonth() === month - 1 && birth.getUTCDate() === day;
  if (!isCalendarDate || year < EARLIEST_BIRTH_YEAR || birth.getTime() > today.getTime()) {
    return { ok: false, problem: 'does not contain a valid birth date' };
  }
  let sum = 0;
  for (let index = 0; index < WEIGHTS.length; index += 1) {
    sum += Number(normalized[index]) * (WEIGHTS[index] ?? 0);
  }
  if (CHECK_CHARACTERS[sum % 11] !== normalized[17]) {
    return { ok: false, problem: 'has a wrong check character' };
  }
  return { ok: true, normalized };
}
