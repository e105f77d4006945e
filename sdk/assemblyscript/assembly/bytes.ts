// Bytes: a view of bytes in linear memory (a message's topic or payload, a JSON value),
// valid during the handler call only. Comparing against string literals and reading numbers
// work on the bytes directly, without decoding to an AssemblyScript string first.

/** ASCII lower case. */
// @ts-ignore: decorator
@inline export function lower(c: u32): u32 {
  return c >= 65 && c <= 90 ? c + 32 : c;
}

export class Bytes {
  constructor(public ptr: usize = 0, public length: i32 = 0) {}

  /** Points this view at other bytes (views are reused to spare allocations). */
  set(ptr: usize, length: i32): Bytes {
    this.ptr = ptr;
    this.length = length;
    return this;
  }

  at(i: i32): u8 {
    if (<u32>i >= <u32>this.length) throw new RangeError("Bytes index out of range");
    return load<u8>(this.ptr + <usize>i);
  }

  /** A view of bytes [start, end). */
  slice(start: i32, end: i32 = i32.MAX_VALUE): Bytes {
    if (end > this.length) end = this.length;
    if (start < 0) start = 0;
    if (end < start) end = start;
    return new Bytes(this.ptr + <usize>start, end - start);
  }

  /** Whether the bytes are exactly the UTF-8 encoding of `s`. */
  equals(s: string): bool {
    return equalsString(this.ptr, this.length, s, false);
  }

  /** Same, ignoring ASCII case ("hPa" / "HPA"). */
  equalsIgnoreCase(s: string): bool {
    return equalsString(this.ptr, this.length, s, true);
  }

  /** The bytes decoded as UTF-8. */
  toString(): string {
    return String.UTF8.decodeUnsafe(this.ptr, <usize>this.length);
  }

  /** A copy that outlives the handler call. */
  toUint8Array(): Uint8Array {
    const a = new Uint8Array(this.length);
    memory.copy(a.dataStart, this.ptr, <usize>this.length);
    return a;
  }
}

/** Compares n bytes at p with string s: ASCII strings without encoding, others via UTF-8. */
export function equalsString(p: usize, n: i32, s: string, ignoreCase: bool): bool {
  const len = s.length;
  let ascii = true;
  for (let i = 0; i < len; i++) {
    if (<u32>s.charCodeAt(i) >= 0x80) {
      ascii = false;
      break;
    }
  }
  if (ascii) {
    if (len != n) return false;
    for (let i = 0; i < len; i++) {
      let a = <u32>load<u8>(p + <usize>i), b = <u32>s.charCodeAt(i);
      if (ignoreCase) {
        a = lower(a);
        b = lower(b);
      }
      if (a != b) return false;
    }
    return true;
  }
  const enc = String.UTF8.encode(s);
  if (enc.byteLength != n) return false;
  const q = changetype<usize>(enc);
  for (let i = 0; i < n; i++) {
    let a = <u32>load<u8>(p + <usize>i), b = <u32>load<u8>(q + <usize>i);
    if (ignoreCase) {
      a = lower(a);
      b = lower(b);
    }
    if (a != b) return false;
  }
  return true;
}

/** The UTF-8 bytes of s in a fresh buffer, viewed as Bytes (kept alive by the buffer). */
export class Utf8 extends Bytes {
  buffer: ArrayBuffer;
  constructor(s: string) {
    const buf = String.UTF8.encode(s);
    super(changetype<usize>(buf), buf.byteLength);
    this.buffer = buf;
  }
}
