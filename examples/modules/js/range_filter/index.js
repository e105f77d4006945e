// range_filter: passes a JSON message on when one of its numbers lies in [min, max].
//
// The JavaScript twin of ../../range_filter.c, with the same config, outputs and reject texts:
//   config   field (default "value", at most 64 bytes), min and max (inclusive; default
//            -Infinity and Infinity), read once per instance in setup
//   input    a JSON object, e.g. {"device":"d1","value":21.5}
//   output   the input unchanged on the default topic, or nothing when out of range
//   rejects  payload is not a JSON object / field "value" missing / field "value" is not a
//            number / field "value" is NaN
import { config, handler, parseJson, reject, setup, utf8Encode } from "iotwasm-sdk";

let field = "value";
let lo = -Infinity;
let hi = Infinity;

setup(() => {
  lo = config.number("min", -Infinity);
  hi = config.number("max", Infinity);
  field = config.get("field", "value");
  if (utf8Encode(field).length > 64) throw new Error("field is longer than 64 bytes");
  if (lo > hi) throw new Error(`min ${lo} > max ${hi}`);
});

handler((msg) => {
  let reading = null;
  try {
    reading = parseJson(msg.text);
  } catch (e) {
    reading = null;
  }
  if (reading === null || typeof reading !== "object" || Array.isArray(reading)) {
    reject("payload is not a JSON object");
  }
  if (!Object.prototype.hasOwnProperty.call(reading, field)) reject(`field "${field}" missing`);
  const v = reading[field];
  if (typeof v !== "number") reject(`field "${field}" is not a number`);
  if (Number.isNaN(v)) reject(`field "${field}" is NaN`);
  if (v < lo || v > hi) return null; // dropped: no output at all
  return msg;
});
