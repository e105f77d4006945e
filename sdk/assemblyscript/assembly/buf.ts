// Buf: appending bytes, numbers and JSON to a fixed region of memory, most often a message
// built in place in the output buffer (Output.begin / Output.end). Numbers are written as the
// C SDK writes them, so modules in either language produce the same bytes.
import { Bytes } from "./bytes";

const HEX = "0123456789abcdef";

export class Buf {
  /** Once something did not fit, further writes are ignored: check once at the end. */
  overflow: bool = false;
  constructor(public ptr: usize = 0, public cap: i32 = 0, public length: i32 = 0) {}

  reset(ptr: usize, cap: i32): Buf {
    this.ptr = ptr;
    this.cap = cap;
    this.length = 0;
    this.overflow = false;
    return this;
  }

  /** The bytes written so far. */
  bytes(): Bytes {
    return new Bytes(this.ptr, this.length);
  }

  raw(p: usize, n: i32): Buf {
    if (this.overflow || n > this.cap - this.length) {
      this.overflow = true;
    } else {
      memory.copy(this.ptr + <usize>this.length, p, <usize>n);
      this.length += n;
    }
    return this;
  }

  put(b: Bytes): Buf {
    return this.raw(b.ptr, b.length);
  }

  char(c: u32): Buf {
    if (this.overflow || this.length >= this.cap) {
      this.overflow = true;
    } else {
      store<u8>(this.ptr + <usize>this.length, <u8>c);
      this.length++;
    }
    return this;
  }

  /** A string, UTF-8 encoded (ASCII without an intermediate buffer). */
  str(s: string): Buf {
    const n = s.length;
    for (let i = 0; i < n; i++) {
      if (<u32>s.charCodeAt(i) >= 0x80) {
        const b = String.UTF8.encode(s);
        return this.raw(changetype<usize>(b), b.byteLength);
      }
    }
    for (let i = 0; i < n; i++) this.char(<u32>s.charCodeAt(i));
    return this;
  }

  u64(v: u64): Buf {
    const tmp = memory.data(20);
    let n = 0;
    do {
      store<u8>(tmp + <usize>(19 - n), <u8>(48 + v % 10));
      n++;
      v /= 10;
    } while (v);
    return this.raw(tmp + <usize>(20 - n), n);
  }

  i64(v: i64): Buf {
    if (v < 0) return this.char(45).u64(<u64>0 - <u64>v);
    return this.u64(<u64>v);
  }

  /**
   * A double as a JSON number: fixed notation, rounded to 6 decimals with trailing zeros
   * trimmed ("21.5", "-0.25", "3"); NaN and infinities as null. Magnitudes of 1e13 and above
   * lose their fraction; from 1.8e19 on they are written with an exponent.
   */
  f64(v: f64): Buf {
    if (v != v || v - v != 0) return this.str("null");
    const neg = v < 0;
    let a = neg ? -v : v;
    if (a < 1e13) {
      const scaled = <u64>(a * 1e6 + 0.5);
      if (scaled == 0) return this.char(48);
      if (neg) this.char(45);
      this.u64(scaled / 1000000);
      let frac = <u32>(scaled % 1000000);
      if (frac) {
        const d = memory.data(7);
        store<u8>(d, 46);
        for (let k = 6; k >= 1; k--) {
          store<u8>(d + <usize>k, <u8>(48 + frac % 10));
          frac /= 10;
        }
        let n = 6;
        while (load<u8>(d + <usize>n) == 48) n--;
        this.raw(d, n + 1);
      }
      return this;
    }
    if (a < 1.8e19) {
      if (neg) this.char(45);
      return this.u64(<u64>(a + 0.5));
    }
    let e: u64 = 0;
    while (a >= 1e16) {
      a /= 1e16;
      e += 16;
    }
    while (a >= 10) {
      a /= 10;
      e++;
    }
    if (neg) this.char(45);
    return this.f64(a).str("e+").u64(e);
  }

  hex(b: Bytes): Buf {
    for (let i = 0; i < b.length; i++) {
      const c = <i32>load<u8>(b.ptr + <usize>i);
      this.char(HEX.charCodeAt(c >> 4)).char(HEX.charCodeAt(c & 15));
    }
    return this;
  }

  /** Bytes as a JSON string, escaping quotes, backslashes and control characters. */
  jsonBytes(b: Bytes): Buf {
    this.char(34);
    for (let i = 0; i < b.length; i++) {
      const c = <u32>load<u8>(b.ptr + <usize>i);
      if (c == 34 || c == 92) {
        this.char(92).char(c);
      } else if (c == 10) {
        this.char(92).char(110);
      } else if (c < 0x20) {
        this.str("\\u00").char(HEX.charCodeAt(c >> 4)).char(HEX.charCodeAt(c & 15));
      } else {
        this.char(c);
      }
    }
    return this.char(34);
  }

  /** A string as a JSON string (escaped). */
  jsonStr(s: string): Buf {
    const b = String.UTF8.encode(s);
    return this.jsonBytes(new Bytes(changetype<usize>(b), b.byteLength));
  }

  /** Already-escaped string content between quotes (a string taken from an input document). */
  jsonRawStr(b: Bytes): Buf {
    return this.char(34).put(b).char(34);
  }

  private comma(): void {
    if (this.length) {
      const last = load<u8>(this.ptr + <usize>(this.length - 1));
      if (last != 123 && last != 91) this.char(44);
    }
  }

  /** An object key, with the separating comma unless it is the first member after '{'. */
  key(k: string): Buf {
    this.comma();
    return this.char(34).str(k).char(34).char(58);
  }

  /** Same with a key taken from an input document (still escaped). */
  keyRaw(k: Bytes): Buf {
    this.comma();
    return this.jsonRawStr(k).char(58);
  }

  fieldNumber(k: string, v: f64): Buf {
    return this.key(k).f64(v);
  }

  fieldInt(k: string, v: i64): Buf {
    return this.key(k).i64(v);
  }

  fieldStr(k: string, s: string): Buf {
    return this.key(k).jsonStr(s);
  }

  fieldRawStr(k: string, b: Bytes): Buf {
    return this.key(k).jsonRawStr(b);
  }
}
