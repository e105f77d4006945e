// {{name}}: decodes the 12-byte frames of the simulated sensors into JSON, on the topic
// sensors/<device>/<sensor>. Frame, little-endian: magic 0xA5, version 1, device u16, seq u16,
// sensor type u8, flags u8, value*100 i16, battery u8, CRC-8 (poly 0x07) of bytes 0-10.
import { Bytes, Level, Message, Output, log, register } from "iotwasm";
import { iot_abi_version, iot_alloc, iot_free, iot_init, iot_process } from "iotwasm";
export { iot_abi_version, iot_alloc, iot_free, iot_init, iot_process }; // the ABI's exports

const SENSORS: string[] = ["unknown", "temperature", "humidity", "vibration", "pressure"];

function crc8(p: Bytes, n: i32): u8 {
  let crc: u8 = 0;
  for (let i = 0; i < n; i++) {
    crc ^= p.at(i);
    for (let k = 0; k < 8; k++) crc = crc & 0x80 ? (crc << 1) ^ 0x07 : crc << 1;
  }
  return crc;
}

function init(): i32 {
  log(Level.Info, "decoder ready");
  return 0;
}

function handle(msg: Message, out: Output): void {
  const p = msg.payload;
  if (p.length != 12) throw new Error(`frame is ${p.length} bytes, expected 12`);
  if (crc8(p, 11) != p.at(11)) throw new Error("bad CRC");
  if (p.at(0) != 0xa5 || p.at(1) != 1) throw new Error("bad magic or version");
  const device = load<u16>(p.ptr, 2), seq = load<u16>(p.ptr, 4);
  const sensor = SENSORS[p.at(6) <= 4 ? p.at(6) : 0];
  const value = <f64>load<i16>(p.ptr, 8) / 100;
  const id = "dev-" + device.toString().padStart(4, "0");
  const b = out.begin("sensors/" + id + "/" + sensor);
  b.char(123); // {
  b.fieldStr("device", id);
  b.fieldInt("seq", seq);
  b.fieldStr("sensor", sensor);
  b.fieldNumber("value", value);
  b.fieldInt("battery", p.at(10));
  b.char(125); // }
  out.end(b);
}

register(handle, init);
