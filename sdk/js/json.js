// JSON field access with the C SDK's rules (sdk/c/iotwasm.h), so that modules written in every
// language read the same messages the same way: `members(text)` yields the raw key and raw
// value of each top-level member (nested values skipped, escapes not decoded);
// `parseNumber` reads numbers as iot_parse_double does, `formatNumber` writes them as
// iot_buf_double does (up to 6 decimals, trailing zeros trimmed).

export class Malformed extends Error {}

const WS = " \t\n\r";

function skipWs(s, i) {
  while (i < s.length && WS.includes(s[i])) i++;
  return i;
}

function skipString(s, i) {
  for (i++; i < s.length; i++) {
    if (s[i] === "\\") i++;
    else if (s[i] === '"') return i + 1;
  }
  return 0;
}

function skipValue(s, i) {
  if (i >= s.length) return 0;
  if (s[i] === '"') return skipString(s, i);
  if (s[i] === "{" || s[i] === "[") {
    let depth = 0;
    while (i < s.length) {
      const c = s[i];
      if (c === '"') {
        i = skipString(s, i);
        if (!i) return 0;
        continue;
      }
      if (c === "{" || c === "[") depth++;
      else if ((c === "}" || c === "]") && --depth === 0) return i + 1;
      i++;
    }
    return 0;
  }
  const start = i;
  while (i < s.length && !WS.includes(s[i]) && s[i] !== "," && s[i] !== "}" && s[i] !== "]") i++;
  return i > start ? i : 0;
}

// True when the text starts (after whitespace) with '{'.
export function isObject(text) {
  const i = skipWs(text, 0);
  return i < text.length && text[i] === "{";
}

// [rawKey, rawValue] of each top-level member, in order; throws Malformed where the object
// stops being well-formed (members before that point have been yielded).
export function* members(s) {
  let i = skipWs(s, 0);
  if (i >= s.length || s[i] !== "{") throw new Malformed("not a JSON object");
  i = skipWs(s, i + 1);
  if (i < s.length && s[i] === "}") return;
  for (;;) {
    if (i >= s.length || s[i] !== '"') throw new Malformed("expected a key");
    const kend = skipString(s, i);
    if (!kend) throw new Malformed("unterminated key");
    const key = s.slice(i + 1, kend - 1);
    i = skipWs(s, kend);
    if (i >= s.length || s[i] !== ":") throw new Malformed("expected ':'");
    i = skipWs(s, i + 1);
    const vend = skipValue(s, i);
    if (!vend) throw new Malformed("bad value");
    yield [key, s.slice(i, vend)];
    i = skipWs(s, vend);
    if (i < s.length && s[i] === "}") return;
    if (i >= s.length || s[i] !== ",") throw new Malformed("expected ',' or '}'");
    i = skipWs(s, i + 1);
  }
}

const POW10 = Array.from({ length: 23 }, (_, k) => Number(`1e${k}`));
const WORD = /^(infinity|inf|nan)/i;

const isDigit = (c) => c >= "0" && c <= "9";

// The number `text` holds entirely, or null: JSON numbers, a leading '+', and inf, infinity,
// nan in any case.
export function parseNumber(text) {
  const n = text.length;
  let i = 0;
  let neg = false;
  if (i < n && (text[i] === "+" || text[i] === "-")) neg = text[i++] === "-";
  if (i < n && "iInN".includes(text[i])) {
    const m = WORD.exec(text.slice(i));
    if (m === null || i + m[0].length !== n) return null;
    const v = m[1].toLowerCase() === "nan" ? NaN : Infinity;
    return neg ? -v : v;
  }
  let mant = 0n;
  let digits = 0, exp10 = 0, any = false;
  for (; i < n && isDigit(text[i]); i++) {
    any = true;
    if (digits < 19) {
      mant = mant * 10n + BigInt(text.charCodeAt(i) - 48);
      if (mant) digits++;
    } else exp10++;
  }
  if (i < n && text[i] === ".") {
    const dot = i++;
    let frac = false;
    for (; i < n && isDigit(text[i]); i++) {
      frac = true;
      if (digits < 19) {
        mant = mant * 10n + BigInt(text.charCodeAt(i) - 48);
        if (mant) digits++;
        exp10--;
      }
    }
    if (!frac) i = dot;
    any = any || frac;
  }
  if (!any) return null;
  if (i < n && (text[i] === "e" || text[i] === "E")) {
    let j = i + 1, eneg = false, e = 0, edigits = 0;
    if (j < n && (text[j] === "+" || text[j] === "-")) eneg = text[j++] === "-";
    for (; j < n && isDigit(text[j]); j++, edigits++) if (e < 100000) e = e * 10 + (text.charCodeAt(j) - 48);
    if (edigits) {
      exp10 += eneg ? -e : e;
      i = j;
    }
  }
  if (i !== n) return null;
  let v = Number(mant);
  if (mant) {
    if (exp10 > 0) {
      while (exp10 > 22 && v < 1e308) { v *= 1e22; exp10 -= 22; }
      v *= exp10 > 22 ? 1e22 : POW10[exp10];
    } else if (exp10 < 0) {
      while (exp10 < -22 && v > 0) { v /= 1e22; exp10 += 22; }
      v /= POW10[exp10 < -22 ? 22 : -exp10];
    }
  }
  return neg ? -v : v;
}

// Up to 6 decimals, trailing zeros trimmed, no "-0"; null for NaN and infinities.
export function formatNumber(v) {
  if (Number.isNaN(v) || !Number.isFinite(v)) return "null";
  const neg = v < 0;
  let a = neg ? -v : v;
  const sign = neg ? "-" : "";
  if (a < 1e13) {
    const scaled = BigInt(Math.trunc(a * 1e6 + 0.5));
    if (scaled === 0n) return "0";
    let text = String(scaled / 1000000n);
    const frac = scaled % 1000000n;
    if (frac) text += "." + String(frac).padStart(6, "0").replace(/0+$/, "");
    return sign + text;
  }
  if (a < 1.8e19) return sign + String(BigInt(Math.trunc(a + 0.5)));
  let e = 0;
  while (a >= 1e16) { a /= 1e16; e += 16; }
  while (a >= 10) { a /= 10; e++; }
  return sign + formatNumber(a) + `e+${e}`;
}
