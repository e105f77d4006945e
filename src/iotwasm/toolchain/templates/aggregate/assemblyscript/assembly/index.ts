// {{name}}: per device, collects `window` readings (config, default 10) of "value" and then
// emits their count, mean, min and max. The sums live in the instance's memory: a replaced
// instance (after a trap, a throw or a restart) starts over; each replica sees only its share.
import { Level, Message, Output, config, isNumber, json, log, parseNumber, register } from "iotwasm";
import { iot_abi_version, iot_alloc, iot_free, iot_init, iot_process } from "iotwasm";
export { iot_abi_version, iot_alloc, iot_free, iot_init, iot_process }; // the ABI's exports

class Acc {
  n: i32 = 0;
  sum: f64 = 0;
  min: f64 = 0;
  max: f64 = 0;
}

let window: f64 = 10;
const devices = new Map<string, Acc>();
const f = new json.Field();

function init(): i32 {
  const w = config.get("window");
  if (w !== null) {
    if (!isNumber(w) || parseNumber(w) < 1) return 1;
    window = parseNumber(w);
  }
  log(Level.Info, "aggregate ready");
  return 0;
}

function handle(msg: Message, out: Output): void {
  if (json.find(msg.payload, "device", f) != json.FOUND || !f.isString()) {
    throw new Error('"device" missing or not a string');
  }
  const id = f.string()!.toString();
  const v = json.getNumber(msg.payload, "value");
  if (json.find(msg.payload, "value", f) != json.FOUND || !f.isNumber()) {
    throw new Error('"value" missing or not a number');
  }
  if (!devices.has(id)) {
    if (devices.size >= 256 || String.UTF8.byteLength(id) > 64) throw new Error("too many devices");
    devices.set(id, new Acc());
  }
  const a = devices.get(id);
  // computed on copies: an input whose output does not fit is redone from the start, and
  // must not be counted twice
  const n = a.n + 1;
  const sum = a.n ? a.sum + v : v;
  const min = a.n && a.min < v ? a.min : v, max = a.n && a.max > v ? a.max : v;
  if (<f64>n < window) {
    a.n = n;
    a.sum = sum;
    a.min = min;
    a.max = max;
    return;
  }
  const b = out.begin();
  b.char(123); // {
  b.fieldStr("device", id);
  b.fieldInt("count", n);
  b.fieldNumber("mean", sum / n);
  b.fieldNumber("min", min);
  b.fieldNumber("max", max);
  b.char(125); // }
  if (out.end(b)) a.n = 0;
}

register(handle, init);
