//! `Buf`: appending bytes, numbers and JSON to a fixed region (a message being built in place
//! in the output buffer, see `Output::emit_with`). Numbers are written exactly as the C SDK
//! writes them (`iot_buf_double`), so modules in either language produce the same bytes.

/// A byte buffer that never writes past its capacity. Once something did not fit, `overflow`
/// stays set and further writes are ignored, so callers check once at the end.
pub struct Buf<'a> {
    data: &'a mut [u8],
    len: usize,
    overflow: bool,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl<'a> Buf<'a> {
    pub fn new(data: &'a mut [u8]) -> Self {
        Buf { data, len: 0, overflow: false }
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.data[..self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether something did not fit (everything after it was dropped).
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        if self.overflow || b.len() > self.data.len() - self.len {
            self.overflow = true;
        } else {
            self.data[self.len..self.len + b.len()].copy_from_slice(b);
            self.len += b.len();
        }
        self
    }

    pub fn byte(&mut self, c: u8) -> &mut Self {
        if self.overflow || self.len >= self.data.len() {
            self.overflow = true;
        } else {
            self.data[self.len] = c;
            self.len += 1;
        }
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    pub fn u64(&mut self, mut v: u64) -> &mut Self {
        let mut tmp = [0u8; 20];
        let mut n = 0;
        loop {
            tmp[19 - n] = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.bytes(&tmp[20 - n..])
    }

    pub fn i64(&mut self, v: i64) -> &mut Self {
        if v < 0 {
            self.byte(b'-').u64(0u64.wrapping_sub(v as u64))
        } else {
            self.u64(v as u64)
        }
    }

    /// Writes a double as a JSON number: fixed notation, rounded to 6 decimals with trailing
    /// zeros trimmed ("21.5", "-0.25", "3"); NaN and infinities as `null`. Magnitudes of 1e13
    /// and above lose their fraction; from 1.8e19 on they are written with an exponent.
    pub fn f64(&mut self, v: f64) -> &mut Self {
        if v.is_nan() || v.is_infinite() {
            return self.str("null");
        }
        let neg = v < 0.0;
        let mut a = if neg { -v } else { v };
        if a < 1e13 {
            let scaled = (a * 1e6 + 0.5) as u64;
            if scaled == 0 {
                return self.byte(b'0');
            }
            if neg {
                self.byte(b'-');
            }
            self.u64(scaled / 1_000_000);
            let mut frac = (scaled % 1_000_000) as u32;
            if frac != 0 {
                let mut d = [b'.'; 7];
                for k in (1..=6).rev() {
                    d[k] = b'0' + (frac % 10) as u8;
                    frac /= 10;
                }
                let mut n = 6;
                while d[n] == b'0' {
                    n -= 1;
                }
                self.bytes(&d[..n + 1]);
            }
            self
        } else if a < 1.8e19 {
            if neg {
                self.byte(b'-');
            }
            self.u64((a + 0.5) as u64)
        } else {
            let mut e = 0u64;
            while a >= 1e16 {
                a /= 1e16;
                e += 16;
            }
            while a >= 10.0 {
                a /= 10.0;
                e += 1;
            }
            if neg {
                self.byte(b'-');
            }
            self.f64(a).str("e+").u64(e)
        }
    }

    pub fn hex(&mut self, b: &[u8]) -> &mut Self {
        for &c in b {
            self.byte(HEX[(c >> 4) as usize]).byte(HEX[(c & 15) as usize]);
        }
        self
    }

    /// Bytes as a JSON string, escaping quotes, backslashes and control characters: for
    /// text that is not JSON yet (topics, config values).
    pub fn json_str(&mut self, s: &[u8]) -> &mut Self {
        self.byte(b'"');
        for &c in s {
            if c == b'"' || c == b'\\' {
                self.byte(b'\\').byte(c);
            } else if c == b'\n' {
                self.str("\\n");
            } else if c < 0x20 {
                self.bytes(&[b'\\', b'u', b'0', b'0', HEX[(c >> 4) as usize], HEX[(c & 15) as usize]]);
            } else {
                self.byte(c);
            }
        }
        self.byte(b'"')
    }

    /// Already-escaped string content between quotes: for strings taken from an input
    /// document (`json::Field::string`), which come back still escaped.
    pub fn json_raw_str(&mut self, s: &[u8]) -> &mut Self {
        self.byte(b'"').bytes(s).byte(b'"')
    }

    fn comma(&mut self) {
        if self.len > 0 && !matches!(self.data[self.len - 1], b'{' | b'[') {
            self.byte(b',');
        }
    }

    /// An object key (with the separating comma unless it is the first member after `{`).
    pub fn key(&mut self, key: &str) -> &mut Self {
        self.comma();
        self.byte(b'"').str(key).str("\":")
    }

    /// Same with a key taken from an input document (still escaped).
    pub fn key_raw(&mut self, key: &[u8]) -> &mut Self {
        self.comma();
        self.json_raw_str(key).byte(b':')
    }

    pub fn field_f64(&mut self, key: &str, v: f64) -> &mut Self {
        self.key(key).f64(v)
    }

    pub fn field_i64(&mut self, key: &str, v: i64) -> &mut Self {
        self.key(key).i64(v)
    }

    pub fn field_str(&mut self, key: &str, s: &[u8]) -> &mut Self {
        self.key(key).json_str(s)
    }

    pub fn field_raw_str(&mut self, key: &str, s: &[u8]) -> &mut Self {
        self.key(key).json_raw_str(s)
    }
}

impl core::fmt::Write for Buf<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.str(s);
        if self.overflow {
            Err(core::fmt::Error)
        } else {
            Ok(())
        }
    }
}
