// {{name}}: passes a JSON message on when its "value" lies in [min, max] (config).
import { Malformed, config, handler, isObject, log, members, parseNumber, reject, setup } from "iotwasm-sdk";

let lo = -Infinity, hi = Infinity;

setup(() => {
  // config is read once per instance; throwing refuses to start: the node reports it
  lo = config.number("min", lo);
  hi = config.number("max", hi);
  log.info("filter ready");
});

handler((msg) => {
  const text = msg.text;
  // reject() (or any throw) sends the message to the dead letters with this text
  if (!isObject(text)) reject("payload is not a JSON object");
  let value = null;
  try {
    for (const [key, raw] of members(text)) {
      if (key === "value") {
        value = parseNumber(raw);
        break;
      }
    }
  } catch (e) {
    if (!(e instanceof Malformed)) throw e;
    reject("payload is not a JSON object");
  }
  if (value === null) reject('"value" missing or not a number');
  if (value < lo || value > hi) return null; // dropped
  return msg; // passed on unchanged, on the route's topic
});
