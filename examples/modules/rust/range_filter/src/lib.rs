//! range_filter: passes a JSON message on when one of its numbers lies in [min, max].
//! The Rust version of examples/modules/range_filter.c, with the same config, outputs,
//! rejects and init codes (see examples/modules/README.md).

use iotwasm::{config, json, reject, Message, Module, Output};

struct RangeFilter {
    field: Vec<u8>,
    lo: f64,
    hi: f64,
}

impl Module for RangeFilter {
    fn init() -> Result<Self, i32> {
        // config is read once per instance: a host call per message would cost more than
        // the comparison itself
        let lo = config::number("min").map_err(|_| 1)?.unwrap_or(f64::NEG_INFINITY);
        let hi = config::number("max").map_err(|_| 1)?.unwrap_or(f64::INFINITY);
        let field = config::get("field").unwrap_or_else(|| b"value".to_vec());
        if field.len() > 64 {
            return Err(2);
        }
        if lo > hi {
            return Err(3);
        }
        Ok(RangeFilter { field, lo, hi })
    }

    fn handle(&mut self, msg: &Message, out: &mut Output) -> iotwasm::Result {
        let name = String::from_utf8_lossy(&self.field);
        let f = match json::find(msg.payload, &self.field) {
            Err(_) => return Err("payload is not a JSON object".into()),
            Ok(None) => return Err(reject!("field \"{}\" missing", name)),
            Ok(Some(f)) => f,
        };
        let v = f.number().ok_or_else(|| reject!("field \"{}\" is not a number", name))?;
        if v.is_nan() {
            return Err(reject!("field \"{}\" is NaN", name));
        }
        if v < self.lo || v > self.hi {
            return Ok(()); // dropped: no output at all
        }
        out.emit(msg.payload)
    }
}

iotwasm::export!(RangeFilter);
