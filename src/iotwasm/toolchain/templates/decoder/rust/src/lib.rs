//! {{name}}: decodes the 12-byte frames of the simulated sensors into JSON, on the topic
//! sensors/<device>/<sensor>. Frame, little-endian: magic 0xA5, version 1, device u16, seq
//! u16, sensor type u8, flags u8, value*100 i16, battery u8, CRC-8 (poly 0x07) of bytes 0-10.

use iotwasm::{log, reject, Level, Message, Module, Output};

const SENSORS: [&str; 5] = ["unknown", "temperature", "humidity", "vibration", "pressure"];

fn crc8(data: &[u8]) -> u8 {
    let mut crc = 0u8;
    for &b in data {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 { (crc << 1) ^ 0x07 } else { crc << 1 };
        }
    }
    crc
}

struct Decoder;

impl Module for Decoder {
    fn init() -> Result<Self, i32> {
        log(Level::Info, "decoder ready");
        Ok(Decoder)
    }

    fn handle(&mut self, msg: &Message, out: &mut Output) -> iotwasm::Result {
        let p = msg.payload;
        if p.len() != 12 {
            return Err(reject!("frame is {} bytes, expected 12", p.len()));
        }
        if crc8(&p[..11]) != p[11] {
            return Err("bad CRC".into());
        }
        if p[0] != 0xA5 || p[1] != 1 {
            return Err("bad magic or version".into());
        }
        let device = u16::from_le_bytes([p[2], p[3]]);
        let seq = u16::from_le_bytes([p[4], p[5]]);
        let sensor = SENSORS[if p[6] <= 4 { p[6] as usize } else { 0 }];
        let value = i16::from_le_bytes([p[8], p[9]]) as f64 / 100.0;
        let topic = format!("sensors/dev-{:04}/{}", device, sensor);
        out.emit_with(&topic, |b| {
            b.str("{\"device\":\"dev-");
            b.str(&format!("{:04}", device)).byte(b'"');
            b.field_i64("seq", seq as i64);
            b.field_str("sensor", sensor.as_bytes());
            b.field_f64("value", value);
            b.field_i64("battery", p[10] as i64);
            b.byte(b'}');
        })
    }
}

iotwasm::export!(Decoder);
