// Reading JSON objects: a scanner, not a parser, with the same behaviour as the C SDK's
// iot_json_* functions. It walks the top-level members of one object and hands out raw
// value spans; nested objects and arrays are skipped, not looked into. Strings come back
// as they appear (escapes not decoded), which is what copying them into output needs.
import { Bytes, equalsString } from "./bytes";
import { parseNumberAt, parsedLength } from "./number";

/** What find() and Members.next() report. */
export const FOUND = 1;
export const END = 0;
export const NOT_AN_OBJECT = -1;

/** One member: the key without quotes (still escaped) and the raw value (strings keep quotes). */
export class Field {
  key: Bytes = new Bytes();
  value: Bytes = new Bytes();

  /** Whether the value is a number (JSON syntax, or Infinity/NaN as Python writes them). */
  isNumber(): bool {
    parseNumberAt(this.value.ptr, this.value.length);
    return parsedLength == this.value.length;
  }

  /** The value as a number; NaN when it is not one (isNumber tells the two apart). */
  number(): f64 {
    const v = parseNumberAt(this.value.ptr, this.value.length);
    return parsedLength == this.value.length ? v : NaN;
  }

  isString(): bool {
    return this.value.length > 0 && load<u8>(this.value.ptr) == 34;
  }

  /** The content of a string value, without quotes, still escaped; null when not a string. */
  string(): Bytes | null {
    if (!this.isString()) return null;
    return new Bytes(this.value.ptr + 1, this.value.length - 2);
  }
}

// @ts-ignore: decorator
@inline function isWs(c: u32): bool {
  return c == 32 || c == 9 || c == 10 || c == 13;
}

function skipWs(p: usize, len: i32, i: i32): i32 {
  while (i < len && isWs(load<u8>(p + <usize>i))) i++;
  return i;
}

/** i at an opening quote: the index after the closing quote, or 0 if unterminated. */
function skipString(p: usize, len: i32, i: i32): i32 {
  for (i++; i < len; i++) {
    const c = load<u8>(p + <usize>i);
    if (c == 92) i++;
    else if (c == 34) return i + 1;
  }
  return 0;
}

/** The index after the value starting at i, or 0 when malformed. */
function skipValue(p: usize, len: i32, i: i32): i32 {
  if (i >= len) return 0;
  const first = load<u8>(p + <usize>i);
  if (first == 34) return skipString(p, len, i);
  if (first == 123 || first == 91) {
    let depth = 0;
    while (i < len) {
      const c = load<u8>(p + <usize>i);
      if (c == 34) {
        i = skipString(p, len, i);
        if (!i) return 0;
        continue;
      }
      if (c == 123 || c == 91) depth++;
      else if ((c == 125 || c == 93) && --depth == 0) return i + 1;
      i++;
    }
    return 0;
  }
  const start = i; // number, true, false, null
  while (i < len) {
    const c = load<u8>(p + <usize>i);
    if (isWs(c) || c == 44 || c == 125 || c == 93) break;
    i++;
  }
  return i > start ? i : 0;
}

/** Walks the members of one object: `while ((r = it.next(f)) == FOUND) { ... }`. */
export class Members {
  p: usize = 0;
  len: i32 = 0;
  /** After next() returned END: just past the closing '}'. */
  pos: i32 = 0;
  started: bool = false;

  /** Starts walking `doc`; false when it does not start with '{'. */
  reset(doc: Bytes): bool {
    this.p = doc.ptr;
    this.len = doc.length;
    this.started = false;
    this.pos = skipWs(this.p, this.len, 0);
    return this.pos < this.len && load<u8>(this.p + <usize>this.pos) == 123;
  }

  /** FOUND: the next member is in f. END: the object ended well-formed. NOT_AN_OBJECT: the
   * text is not a well-formed object at this point. */
  next(f: Field): i32 {
    const p = this.p, len = this.len;
    let i = this.pos;
    if (!this.started) {
      if (i >= len || load<u8>(p + <usize>i) != 123) return NOT_AN_OBJECT;
      this.started = true;
      i = skipWs(p, len, i + 1);
      if (i < len && load<u8>(p + <usize>i) == 125) {
        this.pos = i + 1;
        return END;
      }
    } else {
      i = skipWs(p, len, i);
      if (i < len && load<u8>(p + <usize>i) == 125) {
        this.pos = i + 1;
        return END;
      }
      if (i >= len || load<u8>(p + <usize>i) != 44) return NOT_AN_OBJECT;
      i = skipWs(p, len, i + 1);
    }
    if (i >= len || load<u8>(p + <usize>i) != 34) return NOT_AN_OBJECT;
    const kend = skipString(p, len, i);
    if (!kend) return NOT_AN_OBJECT;
    f.key.set(p + <usize>(i + 1), kend - i - 2);
    i = skipWs(p, len, kend);
    if (i >= len || load<u8>(p + <usize>i) != 58) return NOT_AN_OBJECT;
    i = skipWs(p, len, i + 1);
    const vend = skipValue(p, len, i);
    if (!vend) return NOT_AN_OBJECT;
    f.value.set(p + <usize>i, vend - i);
    this.pos = vend;
    return FOUND;
  }
}

const scan = new Members();

/**
 * Finds a top-level member by key (the first one, if repeated) and puts it in f. FOUND,
 * END when absent from a well-formed object, NOT_AN_OBJECT when the text is not an object
 * (or is malformed before the key turned up).
 */
export function find(doc: Bytes, key: string, f: Field): i32 {
  if (!scan.reset(doc)) return NOT_AN_OBJECT;
  let r: i32;
  while ((r = scan.next(f)) == FOUND) {
    if (equalsString(f.key.ptr, f.key.length, key, false)) return FOUND;
  }
  return r;
}

const tmp = new Field();

/** Member `key` as a number; NaN when absent or not a number. */
export function getNumber(doc: Bytes, key: string): f64 {
  if (find(doc, key, tmp) != FOUND) return NaN;
  return tmp.number();
}

/** Member `key` as text (escapes not decoded); null when absent or not a string. */
export function getString(doc: Bytes, key: string): string | null {
  if (find(doc, key, tmp) != FOUND) return null;
  const s = tmp.string();
  return s ? s.toString() : null;
}
