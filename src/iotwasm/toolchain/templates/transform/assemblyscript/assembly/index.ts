// {{name}}: rewrites "value" as value * scale + offset (config), keeping the other members.
import { Level, Message, Output, config, isNumber, json, log, parseNumber, register } from "iotwasm";
import { iot_abi_version, iot_alloc, iot_free, iot_init, iot_process } from "iotwasm";
export { iot_abi_version, iot_alloc, iot_free, iot_init, iot_process }; // the ABI's exports

let scale = 1.0, offset = 0.0;
const it = new json.Members();
const f = new json.Field();

function init(): i32 {
  const s = config.get("scale"), o = config.get("offset");
  if ((s !== null && !isNumber(s)) || (o !== null && !isNumber(o))) return 1;
  if (s !== null) scale = parseNumber(s);
  if (o !== null) offset = parseNumber(o);
  log(Level.Info, "transform ready");
  return 0;
}

function handle(msg: Message, out: Output): void {
  if (!it.reset(msg.payload)) throw new Error("payload is not a JSON object");
  if (json.find(msg.payload, "value", f) != json.FOUND || !f.isNumber()) {
    throw new Error('"value" missing or not a number');
  }
  const converted = f.number() * scale + offset;
  // the output is built in place in the output buffer: members in their order
  const b = out.begin();
  b.char(123); // {
  while (it.next(f) == json.FOUND) {
    b.keyRaw(f.key);
    if (f.key.equals("value")) b.f64(converted);
    else b.put(f.value);
  }
  b.char(125); // }
  out.end(b);
}

register(handle, init);
