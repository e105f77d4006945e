//! {{name}}: per device, collects `window` readings (config, default 10) of "value" and then
//! emits their count, mean, min and max. The sums live in the instance's memory: a replaced
//! instance (after a trap or a restart) starts over, and each replica sees only its share.

use std::collections::HashMap;

use iotwasm::{config, json, log, Level, Message, Module, Output};

#[derive(Clone, Copy)]
struct Acc {
    n: u32,
    sum: f64,
    min: f64,
    max: f64,
}

struct Aggregate {
    window: f64,
    devices: HashMap<Vec<u8>, Acc>,
}

impl Module for Aggregate {
    fn init() -> Result<Self, i32> {
        let window = config::number("window").map_err(|_| 1)?.unwrap_or(10.0);
        if window < 1.0 {
            return Err(1);
        }
        log(Level::Info, "aggregate ready");
        Ok(Aggregate { window, devices: HashMap::new() })
    }

    fn handle(&mut self, msg: &Message, out: &mut Output) -> iotwasm::Result {
        let id = json::string(msg.payload, "device").ok_or("\"device\" missing or not a string")?;
        let v = json::number(msg.payload, "value").ok_or("\"value\" missing or not a number")?;
        if !self.devices.contains_key(id) && (self.devices.len() >= 256 || id.len() > 64) {
            return Err("too many devices".into());
        }
        let acc = self.devices.entry(id.to_vec()).or_insert(Acc { n: 0, sum: 0.0, min: v, max: v });
        // updated on a copy: an input whose output does not fit is redone from the start,
        // and must not be counted twice
        let mut next = *acc;
        next.sum = if acc.n > 0 { acc.sum + v } else { v };
        next.min = if acc.n > 0 && acc.min < v { acc.min } else { v };
        next.max = if acc.n > 0 && acc.max > v { acc.max } else { v };
        next.n = acc.n + 1;
        if (next.n as f64) < self.window {
            *acc = next;
            return Ok(());
        }
        out.emit_with("", |b| {
            b.byte(b'{');
            b.field_raw_str("device", id);
            b.field_i64("count", next.n as i64);
            b.field_f64("mean", next.sum / next.n as f64);
            b.field_f64("min", next.min);
            b.field_f64("max", next.max);
            b.byte(b'}');
        })?;
        acc.n = 0;
        Ok(())
    }
}

iotwasm::export!(Aggregate);
