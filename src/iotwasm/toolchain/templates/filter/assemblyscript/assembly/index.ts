// {{name}}: passes a JSON message on when its "value" lies in [min, max] (config).
import { Level, Message, Output, config, isNumber, json, log, parseNumber, register } from "iotwasm";
import { iot_abi_version, iot_alloc, iot_free, iot_init, iot_process } from "iotwasm";
export { iot_abi_version, iot_alloc, iot_free, iot_init, iot_process }; // the ABI's exports

let lo = -Infinity, hi = Infinity;
const f = new json.Field();

function init(): i32 {
  // config is read once per instance; 1 refuses to start: the node reports it
  const min = config.get("min"), max = config.get("max");
  if ((min !== null && !isNumber(min)) || (max !== null && !isNumber(max))) return 1;
  if (min !== null) lo = parseNumber(min);
  if (max !== null) hi = parseNumber(max);
  log(Level.Info, "filter ready");
  return 0;
}

function handle(msg: Message, out: Output): void {
  const found = json.find(msg.payload, "value", f);
  // a throw rejects the message: it goes to the dead letters with this text
  if (found == json.NOT_AN_OBJECT) throw new Error("payload is not a JSON object");
  if (found != json.FOUND || !f.isNumber()) throw new Error('"value" missing or not a number');
  const v = f.number();
  if (v < lo || v > hi) return; // dropped
  out.emit(msg.payload);
}

register(handle, init);
