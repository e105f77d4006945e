// Numbers: parsing and writing decimal text exactly as the C SDK does (iot_parse_double,
// iot_buf_double in sdk/c/iotwasm.h), operation for operation, so modules in either language
// read and write the same bits.
import { lower } from "./bytes";

const POW10: StaticArray<f64> = [
  1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
  1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

function prefixIeq(p: usize, n: i32, word: string): bool {
  const k = word.length;
  if (n < k) return false;
  for (let i = 0; i < k; i++) if (lower(load<u8>(p + <usize>i)) != <u32>word.charCodeAt(i)) return false;
  return true;
}

/** Set by parseNumberAt: how many bytes the number took (0: not a number). */
export let parsedLength: i32 = 0;

/**
 * Parses a decimal number at the start of the n bytes at p: optional sign, digits, fraction,
 * exponent (JSON syntax plus a leading '+'), or inf / infinity / nan in any case. Returns the
 * value and sets `parsedLength` to the bytes consumed (0 when there is no number: the result
 * is then 0).
 */
export function parseNumberAt(s: usize, len: i32): f64 {
  let i = 0;
  let neg = false;
  parsedLength = 0;
  if (i < len) {
    const c = load<u8>(s);
    if (c == 45 || c == 43) {
      neg = c == 45;
      i++;
    }
  }
  if (i < len) {
    const c = lower(load<u8>(s + <usize>i));
    if (c == 105 || c == 110) { // 'i', 'n'
      let v: f64;
      if (prefixIeq(s + <usize>i, len - i, "infinity")) {
        i += 8;
        v = Infinity;
      } else if (prefixIeq(s + <usize>i, len - i, "inf")) {
        i += 3;
        v = Infinity;
      } else if (prefixIeq(s + <usize>i, len - i, "nan")) {
        i += 3;
        v = NaN;
      } else {
        return 0;
      }
      parsedLength = i;
      return neg ? -v : v;
    }
  }
  let mant: u64 = 0;
  let digits = 0;
  let exp10 = 0;
  let any = false;
  for (; i < len; i++) {
    const c = <u32>load<u8>(s + <usize>i) - 48;
    if (c > 9) break;
    any = true;
    if (digits < 19) {
      mant = mant * 10 + <u64>c;
      if (mant != 0) digits++;
    } else {
      exp10++;
    }
  }
  if (i < len && load<u8>(s + <usize>i) == 46) { // '.'
    const dot = i++;
    let frac = false;
    for (; i < len; i++) {
      const c = <u32>load<u8>(s + <usize>i) - 48;
      if (c > 9) break;
      frac = true;
      if (digits < 19) {
        mant = mant * 10 + <u64>c;
        if (mant != 0) digits++;
        exp10--;
      }
    }
    if (!frac) i = dot;
    any = any || frac;
  }
  if (!any) return 0;
  if (i < len && (load<u8>(s + <usize>i) | 32) == 101) { // 'e' or 'E'
    let j = i + 1;
    let eneg = false, e = 0, edigits = 0;
    if (j < len) {
      const c = load<u8>(s + <usize>j);
      if (c == 45 || c == 43) {
        eneg = c == 45;
        j++;
      }
    }
    for (; j < len; j++, edigits++) {
      const c = <u32>load<u8>(s + <usize>j) - 48;
      if (c > 9) break;
      if (e < 100000) e = e * 10 + <i32>c;
    }
    if (edigits) {
      exp10 += eneg ? -e : e;
      i = j;
    }
  }
  let v = <f64>mant;
  if (mant != 0) {
    if (exp10 > 0) {
      while (exp10 > 22 && v < 1e308) {
        v *= 1e22;
        exp10 -= 22;
      }
      v *= exp10 > 22 ? 1e22 : unchecked(POW10[exp10]);
    } else if (exp10 < 0) {
      while (exp10 < -22 && v > 0) {
        v /= 1e22;
        exp10 += 22;
      }
      v /= unchecked(POW10[exp10 < -22 ? 22 : -exp10]);
    }
  }
  parsedLength = i;
  return neg ? -v : v;
}

function isWs(c: u32): bool {
  return c == 32 || c == 9 || c == 10 || c == 13;
}

/** Whether `text` (surrounding whitespace ignored) is exactly one number. */
export function isNumber(text: string): bool {
  const b = String.UTF8.encode(text);
  const p = changetype<usize>(b);
  let a = 0, e = b.byteLength;
  while (a < e && isWs(load<u8>(p + <usize>a))) a++;
  while (e > a && isWs(load<u8>(p + <usize>(e - 1)))) e--;
  if (e == a) return false;
  parseNumberAt(p + <usize>a, e - a);
  return parsedLength == e - a;
}

/** The number `text` holds (surrounding whitespace ignored); NaN when it is not one. */
export function parseNumber(text: string): f64 {
  if (!isNumber(text)) return NaN;
  const b = String.UTF8.encode(text.trim());
  return parseNumberAt(changetype<usize>(b), b.byteLength);
}
