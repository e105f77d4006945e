//! unit_convert: rewrites the reading of a JSON message into another unit. The Rust version
//! of examples/modules/unit_convert.c, with the same config, outputs, rejects and init codes
//! (see examples/modules/README.md).

use iotwasm::{config, json, Buf, Message, Module, Output};

#[derive(PartialEq, Clone, Copy)]
enum Quantity {
    Temperature,
    Pressure,
}

struct Unit {
    name: &'static str, // canonical spelling, written to the output
    q: Quantity,
    // base = value * scale + offset; base is °C for temperature and Pa for pressure
    scale: f64,
    offset: f64,
}

const UNITS: [Unit; 8] = [
    Unit { name: "C", q: Quantity::Temperature, scale: 1.0, offset: 0.0 },
    Unit { name: "F", q: Quantity::Temperature, scale: 5.0 / 9.0, offset: -32.0 * 5.0 / 9.0 },
    Unit { name: "K", q: Quantity::Temperature, scale: 1.0, offset: -273.15 },
    Unit { name: "Pa", q: Quantity::Pressure, scale: 1.0, offset: 0.0 },
    Unit { name: "hPa", q: Quantity::Pressure, scale: 100.0, offset: 0.0 },
    Unit { name: "kPa", q: Quantity::Pressure, scale: 1000.0, offset: 0.0 },
    Unit { name: "psi", q: Quantity::Pressure, scale: 6894.757293168361, offset: 0.0 },
    Unit { name: "bar", q: Quantity::Pressure, scale: 100000.0, offset: 0.0 },
];

/// Index into UNITS of a unit name; case does not matter and a leading "°" is allowed.
fn find_unit(s: &[u8]) -> Option<usize> {
    let s = s.strip_prefix("°".as_bytes()).unwrap_or(s);
    UNITS.iter().position(|u| s.eq_ignore_ascii_case(u.name.as_bytes()))
}

/// Unchanged when the units are equal; otherwise through the base unit.
fn convert(v: f64, from: usize, to: usize) -> f64 {
    if from == to {
        return v;
    }
    let (f, t) = (&UNITS[from], &UNITS[to]);
    if t.q == Quantity::Temperature && f.q == Quantity::Temperature {
        let c = v * f.scale + f.offset;
        return (c - t.offset) / t.scale;
    }
    v * (f.scale / t.scale)
}

/// `a` + at most 64 bytes of `s` + `b`: input text quoted in a reject, kept short.
fn quoted(a: &str, s: &[u8], b: &str) -> Vec<u8> {
    [a.as_bytes(), &s[..s.len().min(64)], b.as_bytes()].concat()
}

struct UnitConvert {
    target: usize,
}

impl Module for UnitConvert {
    fn init() -> Result<Self, i32> {
        let to = config::get("to").ok_or(1)?;
        let target = find_unit(&to).ok_or(2)?;
        Ok(UnitConvert { target })
    }

    fn handle(&mut self, msg: &Message, out: &mut Output) -> iotwasm::Result {
        let members = json::members(msg.payload).map_err(|_| "payload is not a JSON object")?;
        let mut value = 0.0;
        let (mut have_value, mut have_unit) = (false, false);
        let mut sensor: Option<&[u8]> = None;
        let mut from = None;
        for f in members {
            let f = f.map_err(|_| "payload is not a well-formed JSON object")?;
            match f.key {
                b"value" => {
                    have_value = f.number().map(|v| value = v).is_some();
                }
                b"unit" => {
                    let text = f.string().ok_or("unit is not a string")?;
                    have_unit = true;
                    from = find_unit(text);
                    if from.is_none() {
                        return out.reject(quoted("unknown unit \"", text, "\""));
                    }
                }
                b"sensor" => {
                    if let Some(s) = f.string() {
                        sensor = Some(s);
                    }
                }
                _ => {}
            }
        }
        if !have_value {
            return Err("value missing or not a number".into());
        }
        let from = match (from, sensor) {
            (Some(u), _) => u,
            (None, Some(b"temperature")) => 0,
            (None, Some(b"pressure")) => 4,
            (None, Some(s)) => {
                return out.reject(quoted("no unit given and sensor \"", s, "\" has no default unit"))
            }
            (None, None) => return Err("no unit and no sensor given".into()),
        };
        let target = &UNITS[self.target];
        if UNITS[from].q != target.q {
            return Err(iotwasm::reject!("cannot convert {} to {}", UNITS[from].name, target.name));
        }
        let converted = convert(value, from, self.target);

        // Second pass, writing straight into the output buffer: every member is copied as
        // it was, except the two this module owns.
        out.emit_with("", |b: &mut Buf| {
            b.byte(b'{');
            for f in json::members(msg.payload).into_iter().flatten().flatten() {
                b.key_raw(f.key);
                match f.key {
                    b"value" => b.f64(converted),
                    b"unit" => b.json_str(target.name.as_bytes()),
                    _ => b.bytes(f.value),
                };
            }
            if !have_unit {
                b.field_str("unit", target.name.as_bytes());
            }
            b.byte(b'}');
        })
    }
}

iotwasm::export!(UnitConvert);
