// {{name}}: rewrites "value" as value * scale + offset (config), keeping the other members
// as they were written, in their order.
import { Malformed, config, formatNumber, handler, isObject, log, members, parseNumber, reject,
  setup } from "iotwasm-sdk";

let scale = 1, offset = 0;

setup(() => {
  scale = config.number("scale", scale);
  offset = config.number("offset", offset);
  log.info("transform ready");
});

handler((msg) => {
  const text = msg.text;
  if (!isObject(text)) reject("payload is not a JSON object");
  let fields;
  try {
    fields = [...members(text)]; // [key, value] as written
  } catch (e) {
    if (!(e instanceof Malformed)) throw e;
    reject("payload is not a JSON object");
  }
  const found = fields.find(([key]) => key === "value");
  const value = found ? parseNumber(found[1]) : null;
  if (value === null) reject('"value" missing or not a number');
  const converted = formatNumber(value * scale + offset); // up to 6 decimals, as the C SDK writes
  return "{" + fields.map(([key, raw]) => `"${key}":${key === "value" ? converted : raw}`).join(",") + "}";
});
