// {{name}}: decodes the 12-byte frames of the simulated sensors into JSON, on the topic
// sensors/<device>/<sensor>. Frame, little-endian: magic 0xA5, version 1, device u16, seq u16,
// sensor type u8, flags u8, value*100 i16, battery u8, CRC-8 (poly 0x07) of bytes 0-10.
import { emit, formatNumber, handler, log, reject, setup } from "iotwasm-sdk";

const SENSORS = ["unknown", "temperature", "humidity", "vibration", "pressure"];

function crc8(p, n) {
  let crc = 0;
  for (let i = 0; i < n; i++) {
    crc ^= p[i];
    for (let k = 0; k < 8; k++) crc = crc & 0x80 ? ((crc << 1) ^ 0x07) & 0xff : (crc << 1) & 0xff;
  }
  return crc;
}

setup(() => log.info("decoder ready"));

handler((msg) => {
  const p = msg.data;
  if (p.length !== 12) reject(`frame is ${p.length} bytes, expected 12`);
  if (crc8(p, 11) !== p[11]) reject("bad CRC");
  if (p[0] !== 0xa5 || p[1] !== 1) reject("bad magic or version");
  const device = "dev-" + String(p[2] | (p[3] << 8)).padStart(4, "0");
  const seq = p[4] | (p[5] << 8);
  const sensor = SENSORS[p[6] <= 4 ? p[6] : 0];
  const value = (((p[8] | (p[9] << 8)) << 16) >> 16) / 100; // i16, sign-extended
  emit(`{"device":"${device}","seq":${seq},"sensor":"${sensor}",` +
       `"value":${formatNumber(value)},"battery":${p[10]}}`, `sensors/${device}/${sensor}`);
});
