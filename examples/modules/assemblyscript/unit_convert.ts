// unit_convert: rewrites the reading of a JSON message into another unit. The AssemblyScript
// version of examples/modules/unit_convert.c, with the same config, outputs, rejects and
// init codes (see examples/modules/README.md).
import { Buf, Bytes, Message, Output, config, json, register } from "iotwasm";
import { iot_abi_version, iot_alloc, iot_free, iot_init, iot_process } from "iotwasm";
export { iot_abi_version, iot_alloc, iot_free, iot_init, iot_process };

const TEMPERATURE = 1, PRESSURE = 2;

// canonical spelling, quantity, and base = value * scale + offset (°C, Pa)
const NAMES: string[] = ["C", "F", "K", "Pa", "hPa", "kPa", "psi", "bar"];
const QUANTITY: i32[] = [TEMPERATURE, TEMPERATURE, TEMPERATURE, PRESSURE, PRESSURE, PRESSURE, PRESSURE, PRESSURE];
const SCALE: f64[] = [1.0, 5.0 / 9.0, 1.0, 1.0, 100.0, 1000.0, 6894.757293168361, 100000.0];
const OFFSET: f64[] = [0.0, -32.0 * 5.0 / 9.0, -273.15, 0.0, 0.0, 0.0, 0.0, 0.0];

let target = -1;
const it = new json.Members();
const f = new json.Field();
const scratch = new Buf();

/** Index of a unit name, or -1; case does not matter and a leading "°" is allowed. */
function findUnit(s: Bytes): i32 {
  if (s.length >= 2 && load<u8>(s.ptr) == 0xc2 && load<u8>(s.ptr + 1) == 0xb0) s = s.slice(2);
  for (let i = 0; i < NAMES.length; i++) if (s.equalsIgnoreCase(NAMES[i])) return i;
  return -1;
}

function init(): i32 {
  const to = config.getBytes("to");
  if (to === null) return 1;
  target = findUnit(new Bytes(to.dataStart, to.length));
  return target < 0 ? 2 : 0;
}

/** Unchanged when the units are equal; otherwise through the base unit. */
function convert(v: f64, from: i32, to: i32): f64 {
  if (from == to) return v;
  if (QUANTITY[to] == TEMPERATURE && QUANTITY[from] == TEMPERATURE) {
    const c = v * SCALE[from] + OFFSET[from];
    return (c - OFFSET[to]) / SCALE[to];
  }
  return v * (SCALE[from] / SCALE[to]);
}

/** Rejects with a + at most 64 bytes of s + b: input text quoted in a reject, kept short. */
function rejectQuoting(out: Output, a: string, s: Bytes, b: string): void {
  const buf = scratch.reset(memory.data(160), 160).str(a);
  buf.raw(s.ptr, s.length > 64 ? 64 : s.length).str(b);
  out.rejectBytes(buf.bytes());
}

function handle(msg: Message, out: Output): void {
  let value: f64 = 0;
  let haveValue = false, haveUnit = false;
  let sensor: Bytes | null = null;
  let from = -1;
  if (!it.reset(msg.payload)) throw new Error("payload is not a JSON object");
  let r: i32;
  while ((r = it.next(f)) == json.FOUND) {
    if (f.key.equals("value")) {
      haveValue = f.isNumber();
      if (haveValue) value = f.number();
    } else if (f.key.equals("unit")) {
      const text = f.string();
      if (text === null) throw new Error("unit is not a string");
      haveUnit = true;
      from = findUnit(text);
      if (from < 0) return rejectQuoting(out, 'unknown unit "', text, '"');
    } else if (f.key.equals("sensor") && f.isString()) {
      sensor = f.string();
    }
  }
  if (r < 0) throw new Error("payload is not a well-formed JSON object");
  if (!haveValue) throw new Error("value missing or not a number");
  if (from < 0) {
    if (sensor === null) throw new Error("no unit and no sensor given");
    if (sensor.equals("temperature")) from = 0;
    else if (sensor.equals("pressure")) from = 4;
    else return rejectQuoting(out, 'no unit given and sensor "', sensor, '" has no default unit');
  }
  if (QUANTITY[from] != QUANTITY[target]) {
    throw new Error("cannot convert " + NAMES[from] + " to " + NAMES[target]);
  }
  const converted = convert(value, from, target);

  // Second pass, writing straight into the output buffer: every member is copied as it
  // was, except the two this module owns.
  const b = out.begin();
  b.char(123);
  it.reset(msg.payload);
  while (it.next(f) == json.FOUND) {
    b.keyRaw(f.key);
    if (f.key.equals("value")) b.f64(converted);
    else if (f.key.equals("unit")) b.jsonStr(NAMES[target]);
    else b.put(f.value);
  }
  if (!haveUnit) b.fieldStr("unit", NAMES[target]);
  b.char(125);
  out.end(b);
}

register(handle, init);
