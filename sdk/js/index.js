// iotwasm SDK for JavaScript modules, built into WebAssembly components.
//
//   import { handler, setup, reject, config } from "iotwasm-sdk";
//
//   let max = Infinity;
//   setup(() => { max = config.number("max", Infinity); });
//   handler((msg) => {
//     const reading = msg.json();
//     if (reading.value > max) return null;   // dropped: no output
//     return msg;                             // passed on unchanged, on the route's output topic
//   });
//
// A handler returns what to emit (a Message, a string, a Uint8Array, or an object/array
// written as JSON; null/undefined emits nothing) and may call emit(payload, topic) for more
// outputs. reject(reason) - or any exception - sends the input to the dead-letter path with
// the reason; the rest of the batch goes on.
//
// Host services exist only when the deployment grants their capability: log, config, kv,
// clock, random, metrics. The build links the ones the project declares; calling another
// throws CapabilityError. The batch framing (docs/abi.md, "Component ABI") is in batch.js.

import { state, host, emit, reject, parseJson, Message, Reject, CapabilityError, utf8Encode,
  utf8Decode, base64Encode, base64Decode } from "./batch.js";

export { emit, reject, parseJson, Message, Reject, CapabilityError, utf8Encode, utf8Decode,
  base64Encode, base64Decode };
export { Malformed, members, isObject, parseNumber, formatNumber } from "./json.js";
import { parseNumber } from "./json.js";

// Register the function called for every message (one per module).
export function handler(fn) {
  state.handler = fn;
  return fn;
}

// Register a function called once per instance before the first batch: read config here.
// Throwing fails the instance, and the container does not start, with the error's text.
export function setup(fn) {
  state.setup = fn;
  return fn;
}

function write(level, message) {
  state.effects = true;
  host("log").write(level, String(message));
}

// Lines for the container's log (capability `log`).
export const log = {
  debug: (m) => write("debug", m),
  info: (m) => write("info", m),
  warn: (m) => write("warn", m),
  error: (m) => write("error", m),
};

// The deployment's read-only config (capability `config`).
export const config = {
  get(key, fallback = null) {
    const v = host("config").get(key);
    return v === null || v === undefined ? fallback : v;
  },
  // A number from config (the C SDK's syntax, surrounding whitespace ignored); a value that
  // is not a number throws, naming it.
  number(key, fallback) {
    const v = config.get(key);
    if (v === null) return fallback;
    const n = v.length <= 64 ? parseNumber(v.replace(/^[ \t\n\r]+|[ \t\n\r]+$/g, "")) : null;
    if (n === null) throw new Error(`config ${key}=${JSON.stringify(v)} is not a number`);
    return n;
  },
};

// Per-container storage that survives instance restarts (capability `kv`); values are text.
export const kv = {
  get: (key) => {
    const v = host("kv").get(key);
    return v === undefined ? null : v;
  },
  getJson(key, fallback = null) {
    const v = kv.get(key);
    return v === null ? fallback : JSON.parse(v);
  },
  // false when the container's kv quota would be exceeded
  set(key, value) {
    state.effects = true;
    return host("kv").set(key, String(value));
  },
  setJson: (key, value) => kv.set(key, JSON.stringify(value)),
  delete(key) {
    state.effects = true;
    return host("kv").delete(key);
  },
};

// Wall clock (capability `clock`).
export const clock = {
  nowMs: () => Number(host("clock").nowMs()),
};

// Secure randomness from the host (capability `random`); Math.random inside a component is
// seeded when it is built.
export const random = {
  u64: () => BigInt(host("random").nextU64()),
  random: () => Number(BigInt.asUintN(53, BigInt(host("random").nextU64()))) / 2 ** 53,
};

// Counters and gauges on the container's metrics (capability `metrics`).
export const metrics = {
  counter(name, delta = 1) {
    state.effects = true;
    host("metrics").counterAdd(name, Number(delta));
  },
  gauge(name, value) {
    state.effects = true;
    host("metrics").gaugeSet(name, Number(value));
  },
};
