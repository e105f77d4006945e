// range_filter: passes a JSON message on when one of its numbers lies in [min, max].
// The AssemblyScript version of examples/modules/range_filter.c, with the same config,
// outputs, rejects and init codes (see examples/modules/README.md).
import { Message, Output, config, isNumber, json, parseNumber, register } from "iotwasm";
import { iot_abi_version, iot_alloc, iot_free, iot_init, iot_process } from "iotwasm";
export { iot_abi_version, iot_alloc, iot_free, iot_init, iot_process };

let field = "value";
let lo = -Infinity;
let hi = Infinity;
const f = new json.Field();

function init(): i32 {
  // config is read once per instance: a host call per message would cost more than the
  // comparison itself
  const min = config.get("min"), max = config.get("max");
  if (min !== null) {
    if (!isNumber(min)) return 1;
    lo = parseNumber(min);
  }
  if (max !== null) {
    if (!isNumber(max)) return 1;
    hi = parseNumber(max);
  }
  const name = config.get("field");
  if (name !== null) {
    if (String.UTF8.byteLength(name) > 64) return 2;
    field = name;
  }
  if (lo > hi) return 3;
  return 0;
}

function handle(msg: Message, out: Output): void {
  const found = json.find(msg.payload, field, f);
  if (found == json.NOT_AN_OBJECT) throw new Error("payload is not a JSON object");
  if (found == json.END) throw new Error(`field "${field}" missing`);
  if (!f.isNumber()) throw new Error(`field "${field}" is not a number`);
  const v = f.number();
  if (isNaN(v)) throw new Error(`field "${field}" is NaN`);
  if (v < lo || v > hi) return; // dropped: no output at all
  out.emit(msg.payload);
}

register(handle, init);
