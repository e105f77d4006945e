//! {{name}}: rewrites "value" as value * scale + offset (config), keeping the other members.

use iotwasm::{config, json, log, Level, Message, Module, Output};

struct Transform {
    scale: f64,
    offset: f64,
}

impl Module for Transform {
    fn init() -> Result<Self, i32> {
        let scale = config::number("scale").map_err(|_| 1)?.unwrap_or(1.0);
        let offset = config::number("offset").map_err(|_| 1)?.unwrap_or(0.0);
        log(Level::Info, "transform ready");
        Ok(Transform { scale, offset })
    }

    fn handle(&mut self, msg: &Message, out: &mut Output) -> iotwasm::Result {
        let members = json::members(msg.payload).map_err(|_| "payload is not a JSON object")?;
        let v = json::number(msg.payload, "value").ok_or("\"value\" missing or not a number")?;
        let converted = v * self.scale + self.offset;
        // the output is built in place in the output buffer: members in their order
        out.emit_with("", |b| {
            b.byte(b'{');
            for f in members.flatten() {
                b.key_raw(f.key);
                if f.key == b"value" {
                    b.f64(converted);
                } else {
                    b.bytes(f.value);
                }
            }
            b.byte(b'}');
        })
    }
}

iotwasm::export!(Transform);
