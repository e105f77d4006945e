//! {{name}}: passes a JSON message on when its "value" lies in [min, max] (config).

use iotwasm::{config, json, log, Level, Message, Module, Output};

struct Filter {
    lo: f64,
    hi: f64,
}

impl Module for Filter {
    fn init() -> Result<Self, i32> {
        // config is read once per instance; Err(1) refuses to start: the node reports it
        let lo = config::number("min").map_err(|_| 1)?.unwrap_or(f64::NEG_INFINITY);
        let hi = config::number("max").map_err(|_| 1)?.unwrap_or(f64::INFINITY);
        log(Level::Info, "filter ready");
        Ok(Filter { lo, hi })
    }

    fn handle(&mut self, msg: &Message, out: &mut Output) -> iotwasm::Result {
        let field = json::find(msg.payload, "value").map_err(|_| "payload is not a JSON object")?;
        let v = field.and_then(|f| f.number()).ok_or("\"value\" missing or not a number")?;
        if v < self.lo || v > self.hi {
            return Ok(()); // dropped
        }
        out.emit(msg.payload)
    }
}

iotwasm::export!(Filter);
