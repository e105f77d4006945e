// unit_convert: rewrites the reading of a JSON message into another unit.
//
// The JavaScript twin of ../../unit_convert.c, with the same config, outputs and reject texts.
// Members are copied as they were written (the SDK's `members` walks them with the C SDK's
// rules), except `value`, converted and written with up to 6 decimals, and `unit`, set to the
// target (appended when the input had none).
//   config  to: target unit (required): C, F, K; Pa, hPa, kPa, psi, bar (any case, "°" allowed)
import { Malformed, config, formatNumber, handler, isObject, members, parseNumber, reject,
  setup, utf8Encode } from "iotwasm-sdk";

const TEMPERATURE = 1, PRESSURE = 2;
// name, quantity, scale, offset: base = value * scale + offset (°C or Pa)
const UNITS = [["C", TEMPERATURE, 1.0, 0.0], ["F", TEMPERATURE, 5.0 / 9.0, -32.0 * 5.0 / 9.0],
  ["K", TEMPERATURE, 1.0, -273.15], ["Pa", PRESSURE, 1.0, 0.0], ["hPa", PRESSURE, 100.0, 0.0],
  ["kPa", PRESSURE, 1000.0, 0.0], ["psi", PRESSURE, 6894.757293168361, 0.0],
  ["bar", PRESSURE, 100000.0, 0.0]];
let target = UNITS[0];

function findUnit(text) {
  if (text.startsWith("\u00b0")) text = text.slice(1);
  if (!/^[\x00-\x7f]*$/.test(text)) return null; // case-insensitive in ASCII only, as in C
  const low = text.toLowerCase();
  return UNITS.find((u) => u[0].toLowerCase() === low) || null;
}

setup(() => {
  const to = config.get("to");
  if (to === null) throw new Error("config 'to' is missing");
  const unit = utf8Encode(to).length <= 16 ? findUnit(to) : null;
  if (unit === null) throw new Error(`config to=${JSON.stringify(to)} is not a known unit`);
  target = unit;
});

function convert(v, src, dst) {
  if (src === dst) return v;
  if (src[1] === TEMPERATURE && dst[1] === TEMPERATURE) return (v * src[2] + src[3] - dst[3]) / dst[2];
  return v * (src[2] / dst[2]);
}

// The first 64 bytes of `text`; a character cut in half becomes one U+FFFD, as a UTF-8
// decoder reading the C version's bytes makes of it.
function excerpt(text) {
  let out = "", used = 0;
  for (const ch of text) {
    const n = utf8Encode(ch).length;
    if (used + n > 64) return used < 64 ? out + "\ufffd" : out;
    out += ch;
    used += n;
  }
  return out;
}

handler((msg) => {
  const text = msg.text;
  if (!isObject(text)) reject("payload is not a JSON object");
  const fields = [];
  let value = null, haveUnit = false, src = null, sensor = null;
  try {
    for (const [key, raw] of members(text)) {
      fields.push([key, raw]);
      if (key === "value") value = parseNumber(raw);
      else if (key === "unit") {
        if (raw[0] !== '"') reject("unit is not a string");
        haveUnit = true;
        src = findUnit(raw.slice(1, -1));
        if (src === null) reject(`unknown unit "${excerpt(raw.slice(1, -1))}"`);
      } else if (key === "sensor" && raw[0] === '"') sensor = raw.slice(1, -1);
    }
  } catch (e) {
    if (e instanceof Malformed) reject("payload is not a well-formed JSON object");
    throw e;
  }
  if (value === null) reject("value missing or not a number");
  if (src === null) {
    if (sensor === "temperature") src = UNITS[0];
    else if (sensor === "pressure") src = UNITS[4];
    else if (sensor !== null) reject(`no unit given and sensor "${excerpt(sensor)}" has no default unit`);
    else reject("no unit and no sensor given");
  }
  if (src[1] !== target[1]) reject(`cannot convert ${src[0]} to ${target[0]}`);
  const converted = formatNumber(convert(value, src, target));
  const parts = fields.map(([key, raw]) =>
    `"${key}":${key === "value" ? converted : key === "unit" ? `"${target[0]}"` : raw}`);
  if (!haveUnit) parts.push(`"unit":"${target[0]}"`);
  return `{${parts.join(",")}}`;
});
