// {{name}}: per device, collects `window` readings (config, default 10) of "value" and then
// emits their count, mean, min and max. The sums live in the instance's memory: a replaced
// instance (after a trap or a restart) starts over, and each replica sees only its share.
import { Malformed, config, formatNumber, handler, isObject, log, members, parseNumber, reject,
  setup, utf8Encode } from "iotwasm-sdk";

const MAX_DEVICES = 256, MAX_ID = 64;
let window = 10;
const accs = new Map(); // device (as written) -> {n, sum, min, max}

setup(() => {
  window = config.number("window", window);
  if (!(window >= 1)) throw new Error(`config window=${window} must be at least 1`);
  log.info("aggregate ready");
});

// The raw "device" and "value" members (null when absent or not an object).
function fields(text) {
  let device = null, value = null;
  if (isObject(text)) {
    try {
      for (const [key, raw] of members(text)) {
        if (key === "device" && device === null) device = raw;
        else if (key === "value" && value === null) value = raw;
      }
    } catch (e) {
      if (!(e instanceof Malformed)) throw e;
    }
  }
  return [device, value];
}

handler((msg) => {
  const [device, raw] = fields(msg.text);
  if (device === null || !device.startsWith('"')) reject('"device" missing or not a string');
  const value = raw === null ? null : parseNumber(raw);
  if (value === null) reject('"value" missing or not a number');
  let acc = accs.get(device);
  if (acc === undefined) {
    if (accs.size === MAX_DEVICES || utf8Encode(device).length - 2 > MAX_ID) reject("too many devices");
    acc = { n: 0, sum: 0, min: value, max: value };
    accs.set(device, acc);
  }
  const n = acc.n + 1, sum = acc.n ? acc.sum + value : value;
  const min = acc.n && acc.min < value ? acc.min : value, max = acc.n && acc.max > value ? acc.max : value;
  if (n < window) {
    Object.assign(acc, { n, sum, min, max });
    return null;
  }
  acc.n = 0;
  return `{"device":${device},"count":${n},"mean":${formatNumber(sum / n)},` +
         `"min":${formatNumber(min)},"max":${formatNumber(max)}}`;
});
