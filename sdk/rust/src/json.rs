//! Reading JSON objects: a scanner, not a parser, with the same behaviour as the C SDK's
//! `iot_json_*` (sdk/c/iotwasm.h), so modules in either language agree on every input.
//!
//! It walks the top-level members of one object and hands out raw value spans; nested
//! objects and arrays are skipped over, not looked into. Strings come back as they appear
//! (escapes not decoded), which is what copying them into another JSON document needs.

/// Why a payload could not be read as a JSON object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotAnObject;

/// One member of an object: the key without quotes (still escaped) and the raw value
/// (strings keep their quotes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
}

impl<'a> Field<'a> {
    /// The value as a number, when it is one (JSON syntax, or Infinity/NaN as Python writes).
    pub fn number(&self) -> Option<f64> {
        match parse_f64(self.value) {
            Some((v, n)) if n == self.value.len() => Some(v),
            _ => None,
        }
    }

    /// The content of a string value, without quotes and still escaped.
    pub fn string(&self) -> Option<&'a [u8]> {
        if self.value.first() == Some(&b'"') {
            Some(&self.value[1..self.value.len() - 1])
        } else {
            None
        }
    }
}

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

fn skip_ws(p: &[u8], mut i: usize) -> usize {
    while i < p.len() && is_ws(p[i]) {
        i += 1;
    }
    i
}

/// `i` at an opening quote; the index after the closing quote, or `None` if unterminated.
fn skip_string(p: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    while i < p.len() {
        match p[i] {
            b'\\' => i += 1,
            b'"' => return Some(i + 1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// The index after the value starting at `i`, or `None` when malformed.
fn skip_value(p: &[u8], mut i: usize) -> Option<usize> {
    let c = *p.get(i)?;
    if c == b'"' {
        return skip_string(p, i);
    }
    if c == b'{' || c == b'[' {
        let mut depth = 0u32;
        while i < p.len() {
            let c = p[i];
            if c == b'"' {
                i = skip_string(p, i)?;
                continue;
            }
            if c == b'{' || c == b'[' {
                depth += 1;
            } else if c == b'}' || c == b']' {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            i += 1;
        }
        return None;
    }
    let start = i; // number, true, false, null
    while i < p.len() && !is_ws(p[i]) && !matches!(p[i], b',' | b'}' | b']') {
        i += 1;
    }
    if i > start {
        Some(i)
    } else {
        None
    }
}

/// The members of one JSON object, in order. Iteration yields `Err(NotAnObject)` once (and
/// then stops) when the text is not a well-formed object at that point.
pub struct Members<'a> {
    p: &'a [u8],
    pos: usize,
    started: bool,
    done: bool,
}

/// Starts walking an object; `Err` when the text does not start with `{`.
pub fn members(json: &[u8]) -> Result<Members<'_>, NotAnObject> {
    let pos = skip_ws(json, 0);
    if json.get(pos) != Some(&b'{') {
        return Err(NotAnObject);
    }
    Ok(Members { p: json, pos, started: false, done: false })
}

impl<'a> Members<'a> {
    fn step(&mut self) -> Result<Option<Field<'a>>, NotAnObject> {
        let p = self.p;
        let mut i = self.pos;
        if !self.started {
            self.started = true;
            i = skip_ws(p, i + 1);
            if p.get(i) == Some(&b'}') {
                self.pos = i + 1;
                return Ok(None);
            }
        } else {
            i = skip_ws(p, i);
            if p.get(i) == Some(&b'}') {
                self.pos = i + 1;
                return Ok(None);
            }
            if p.get(i) != Some(&b',') {
                return Err(NotAnObject);
            }
            i = skip_ws(p, i + 1);
        }
        if p.get(i) != Some(&b'"') {
            return Err(NotAnObject);
        }
        let kend = skip_string(p, i).ok_or(NotAnObject)?;
        let key = &p[i + 1..kend - 1];
        i = skip_ws(p, kend);
        if p.get(i) != Some(&b':') {
            return Err(NotAnObject);
        }
        i = skip_ws(p, i + 1);
        let vend = skip_value(p, i).ok_or(NotAnObject)?;
        self.pos = vend;
        Ok(Some(Field { key, value: &p[i..vend] }))
    }

    /// Where the walk is: after the last member yielded, or just past the closing `}`.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for Members<'a> {
    type Item = Result<Field<'a>, NotAnObject>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(f)) => Some(Ok(f)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Finds a top-level member by key (the first one, if repeated): `Ok(None)` when absent from
/// a well-formed object, `Err` when the text is not an object (or is malformed before the
/// key turned up).
pub fn find<'a, K: AsRef<[u8]> + ?Sized>(json: &'a [u8], key: &K) -> Result<Option<Field<'a>>, NotAnObject> {
    let key = key.as_ref();
    for f in members(json)? {
        let f = f?;
        if f.key == key {
            return Ok(Some(f));
        }
    }
    Ok(None)
}

/// Member `key` when it exists and is a number.
pub fn number<K: AsRef<[u8]> + ?Sized>(json: &[u8], key: &K) -> Option<f64> {
    find(json, key).ok()??.number()
}

/// The content of member `key` (without quotes, escapes not decoded) when it is a string.
pub fn string<'a, K: AsRef<[u8]> + ?Sized>(json: &'a [u8], key: &K) -> Option<&'a [u8]> {
    find(json, key).ok()??.string()
}

fn lower(c: u8) -> u8 {
    c.to_ascii_lowercase()
}

fn prefix_ieq(p: &[u8], word: &[u8]) -> bool {
    p.len() >= word.len() && p.iter().zip(word).all(|(a, b)| lower(*a) == *b)
}

/// Exactly representable, so one multiplication or division rounds only once.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Parses a decimal number at the start of `s`: optional sign, digits, fraction, exponent
/// (JSON syntax plus a leading `+`), or inf / infinity / nan in any case. Returns the value
/// and the number of bytes consumed, `None` when `s` does not start with a number.
///
/// The same algorithm as the C SDK's `iot_parse_double`, operation for operation, so both
/// give the same bits: exact for up to 15 significant digits with exponents within ±22,
/// accurate to a few ulps beyond.
pub fn parse_f64(s: &[u8]) -> Option<(f64, usize)> {
    let len = s.len();
    let mut i = 0;
    let mut neg = false;
    if i < len && (s[i] == b'-' || s[i] == b'+') {
        neg = s[i] == b'-';
        i += 1;
    }
    if i < len && (lower(s[i]) == b'i' || lower(s[i]) == b'n') {
        let v;
        if prefix_ieq(&s[i..], b"infinity") {
            i += 8;
            v = f64::INFINITY;
        } else if prefix_ieq(&s[i..], b"inf") {
            i += 3;
            v = f64::INFINITY;
        } else if prefix_ieq(&s[i..], b"nan") {
            i += 3;
            v = f64::NAN;
        } else {
            return None;
        }
        return Some((if neg { -v } else { v }, i));
    }
    let mut mant: u64 = 0;
    let mut digits = 0;
    let mut exp10: i32 = 0;
    let mut any = false;
    while i < len && s[i].is_ascii_digit() {
        any = true;
        if digits < 19 {
            mant = mant * 10 + (s[i] - b'0') as u64;
            if mant != 0 {
                digits += 1;
            }
        } else {
            exp10 += 1;
        }
        i += 1;
    }
    if i < len && s[i] == b'.' {
        let dot = i;
        i += 1;
        let mut frac = false;
        while i < len && s[i].is_ascii_digit() {
            frac = true;
            if digits < 19 {
                mant = mant * 10 + (s[i] - b'0') as u64;
                if mant != 0 {
                    digits += 1;
                }
                exp10 -= 1;
            }
            i += 1;
        }
        if !frac {
            i = dot;
        }
        any |= frac;
    }
    if !any {
        return None;
    }
    if i < len && (s[i] == b'e' || s[i] == b'E') {
        let mut j = i + 1;
        let mut eneg = false;
        let mut e: i32 = 0;
        let mut edigits = 0;
        if j < len && (s[j] == b'-' || s[j] == b'+') {
            eneg = s[j] == b'-';
            j += 1;
        }
        while j < len && s[j].is_ascii_digit() {
            if e < 100_000 {
                e = e * 10 + (s[j] - b'0') as i32;
            }
            j += 1;
            edigits += 1;
        }
        if edigits > 0 {
            exp10 += if eneg { -e } else { e };
            i = j;
        }
    }
    let mut v = mant as f64;
    if mant != 0 {
        if exp10 > 0 {
            while exp10 > 22 && v < 1e308 {
                v *= 1e22;
                exp10 -= 22;
            }
            v *= if exp10 > 22 { 1e22 } else { POW10[exp10 as usize] };
        } else if exp10 < 0 {
            while exp10 < -22 && v > 0.0 {
                v /= 1e22;
                exp10 += 22;
            }
            v /= POW10[if exp10 < -22 { 22 } else { (-exp10) as usize }];
        }
    }
    Some((if neg { -v } else { v }, i))
}
