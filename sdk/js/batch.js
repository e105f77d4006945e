// The guest side of the component ABI: one call per batch, one string in, one string out.
//
// Input records are separated by U+001E (RS), their fields by U+001F (US):
// `<flag><timestamp_ms> US <topic> US <payload>` with flag 0 (as is), 1 (payload base64),
// 2 (topic base64) or 3 (both). Output records: `<index> US <kind> US <topic> US <payload>`
// with kind m (message), b (message, payload base64), i (the input's payload unchanged) or
// r (reject, payload = reason). The whole batch crosses the sandbox as one string: a list of
// records would cost a host-side conversion per element.
//
// Plain JavaScript without imports, so it is also tested under Node.

export const RS = "\x1e";
export const US = "\x1f";

export class Reject extends Error {
  constructor(reason) {
    super(String(reason));
    this.name = "Reject";
    this.reason = String(reason);
  }
}

export class CapabilityError extends Error {}

// Thrown out of processBatch: the entry reports it as "out of memory: ...", which the host
// counts as the container's memory limit.
export class OutOfMemory extends Error {}

export const state = {
  handler: null,
  setup: null,
  effects: false,
  out: null,
  index: -1,
  msg: null,
  host: {},
};

// Called by the generated entry module with the host interfaces the build linked.
export function bind(interfaces) {
  Object.assign(state.host, interfaces);
}

export function host(name) {
  const h = state.host[name];
  if (!h) {
    throw new CapabilityError(`capability '${name}' is not declared by this module: add it ` +
      "to the project's capabilities and rebuild");
  }
  return h;
}

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// UTF-8 by hand: QuickJS has no TextEncoder/TextDecoder. Lone surrogates become U+FFFD.
export function utf8Encode(text) {
  const out = [];
  for (const ch of text) {
    let c = ch.codePointAt(0);
    if (c >= 0xd800 && c <= 0xdfff) c = 0xfffd;
    if (c < 0x80) out.push(c);
    else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
  }
  return Uint8Array.from(out);
}

// Decodes UTF-8; with `fatal`, invalid input throws instead of becoming U+FFFD.
export function utf8Decode(bytes, fatal = false) {
  let out = "";
  for (let i = 0; i < bytes.length;) {
    const b = bytes[i];
    const need = b < 0x80 ? 0 : b >= 0xc2 && b < 0xe0 ? 1 : b >= 0xe0 && b < 0xf0 ? 2 : b >= 0xf0 && b < 0xf5 ? 3 : -1;
    let c = need === 0 ? b : need === 1 ? b & 31 : need === 2 ? b & 15 : b & 7;
    let ok = need >= 0;
    for (let k = 1; ok && k <= need; k++) {
      const x = bytes[i + k];
      if (x === undefined || (x & 0xc0) !== 0x80) ok = false;
      else c = (c << 6) | (x & 63);
    }
    if (ok && ((need === 2 && (c < 0x800 || (c >= 0xd800 && c <= 0xdfff))) || (need === 3 && (c < 0x10000 || c > 0x10ffff)))) ok = false;
    if (!ok) {
      if (fatal) throw new TypeError("invalid UTF-8");
      out += "\ufffd";
      i += 1;
      continue;
    }
    out += String.fromCodePoint(c);
    i += need + 1;
  }
  return out;
}

export function base64Encode(bytes) {
  let out = "";
  let i = 0;
  for (; i + 2 < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8) | bytes[i + 2];
    out += B64[n >> 18] + B64[(n >> 12) & 63] + B64[(n >> 6) & 63] + B64[n & 63];
  }
  if (i < bytes.length) {
    const n = (bytes[i] << 16) | ((i + 1 < bytes.length ? bytes[i + 1] : 0) << 8);
    out += B64[n >> 18] + B64[(n >> 12) & 63];
    out += i + 1 < bytes.length ? B64[(n >> 6) & 63] : "=";
    out += "=";
  }
  return out;
}

export function base64Decode(text) {
  const clean = text.replace(/=+$/, "");
  const out = new Uint8Array(Math.floor((clean.length * 3) / 4));
  let bits = 0, value = 0, k = 0;
  for (let i = 0; i < clean.length; i++) {
    const d = B64.indexOf(clean[i]);
    if (d < 0) throw new Error("bad base64");
    value = (value << 6) | d;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[k++] = (value >> bits) & 255;
    }
  }
  return out.subarray(0, k);
}

// Bare NaN / Infinity / -Infinity tokens, as Python's json module writes them.
const NON_FINITE = /([:\[,]\s*)(-?)(NaN|Infinity)(?=\s*[,\]}])/g;
const NON_FINITE_MARK = "\u0000iotwasm-non-finite:";
const NON_FINITE_MARK_JSON = "\\u0000iotwasm-non-finite:";

function reviveNonFinite(key, value) {
  if (typeof value === "string" && value.startsWith(NON_FINITE_MARK)) {
    const t = value.slice(NON_FINITE_MARK.length);
    return t === "NaN" ? NaN : t === "-Infinity" ? -Infinity : Infinity;
  }
  return value;
}

// JSON.parse that also accepts NaN and Infinity (Python's json module writes them).
export function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch (e) {
    if (!/NaN|Infinity/.test(text)) throw e;
    const marked = text.replace(NON_FINITE, (m, pre, sign, word) =>
      `${pre}"${NON_FINITE_MARK_JSON}${sign}${word}"`);
    return JSON.parse(marked, reviveNonFinite);
  }
}

export class Message {
  constructor(topic, payload, head = "0") {
    this.topic = topic;
    // a string for text payloads, a Uint8Array for binary ones
    this.payload = payload;
    this._head = head;
  }

  // When the host received the message (Unix ms).
  get timestampMs() {
    return Number(this._head.slice(1) || 0);
  }

  get text() {
    return typeof this.payload === "string" ? this.payload : utf8Decode(this.payload);
  }

  get data() {
    return typeof this.payload === "string" ? utf8Encode(this.payload) : this.payload;
  }

  // The payload parsed as JSON (throws when it is not JSON).
  json() {
    return parseJson(this.text);
  }
}

function clean(text) {
  return String(text).replace(/[\x1e\x1f]/g, " ");
}

function hasSeparator(text) {
  return text.indexOf(RS) >= 0 || text.indexOf(US) >= 0;
}

// One output record; the input's own payload (or the input itself) goes back as a reference.
export function encodeOutput(index, value, topic, msg) {
  const t = topic == null ? "" : String(topic);
  if (hasSeparator(t)) throw new Error("output topic contains control characters U+001E/U+001F");
  if (msg && (value === msg || value === msg.payload)) return `${index}${US}i${US}${t}${US}`;
  if (value instanceof Message) value = value.payload;
  if (typeof value === "string") {
    if (hasSeparator(value)) return `${index}${US}b${US}${t}${US}${base64Encode(utf8Encode(value))}`;
    return `${index}${US}m${US}${t}${US}${value}`;
  }
  if (value instanceof Uint8Array) {
    let text = null;
    try {
      text = utf8Decode(value, true);
    } catch (e) {
      text = null;
    }
    if (text === null || hasSeparator(text)) return `${index}${US}b${US}${t}${US}${base64Encode(value)}`;
    return `${index}${US}m${US}${t}${US}${text}`;
  }
  // JSON.stringify escapes control characters, so the text cannot hold a separator
  return `${index}${US}m${US}${t}${US}${JSON.stringify(value)}`;
}

export function emit(payload, topic = null) {
  if (state.out === null || state.msg === null) throw new Error("emit() called outside a message handler");
  state.out.push(encodeOutput(state.index, payload, topic, state.msg));
}

export function reject(reason) {
  throw new Reject(reason);
}

function decodeInput(flag, topic, payload) {
  const bits = Number(flag);
  let data = payload;
  if (bits & 1) {
    const raw = base64Decode(payload);
    try {
      const text = utf8Decode(raw, true);
      data = hasSeparator(text) ? raw : text;
    } catch (e) {
      data = raw;
    }
  }
  if (bits & 2) topic = utf8Decode(base64Decode(topic));
  return [topic, data];
}

function describe(e) {
  if (e instanceof Reject) return e.reason;
  if (e instanceof Error) return `${e.name}: ${e.message}`;
  return String(e);
}

// Run the module's setup; returns the problem as text, or null.
export function runSetup() {
  if (state.handler === null) return "the module registers no handler (call handler(fn))";
  if (state.setup === null) return null;
  try {
    state.setup();
  } catch (e) {
    return clean(describe(e));
  }
  return null;
}

// Handle a batch; return the output records not committed during the call. `commit(done,
// records)` is called after an input that had lasting effects (log, kv writes, metrics).
export function processBatch(batch, commit = null) {
  if (batch.length === 0) return "";
  const handler = state.handler;
  if (handler === null) throw new Error("no handler registered");
  const out = [];
  state.out = out;
  state.effects = false;
  const recs = batch.split(RS);
  for (let i = 0; i < recs.length; i++) {
    const rec = recs[i];
    const a = rec.indexOf(US);
    const b = rec.indexOf(US, a + 1);
    const head = rec.slice(0, a);
    let topic = rec.slice(a + 1, b);
    let payload = rec.slice(b + 1);
    if (head[0] !== "0") [topic, payload] = decodeInput(head[0], topic, payload);
    const msg = new Message(topic, payload, head);
    state.index = i;
    state.msg = msg;
    try {
      const value = handler(msg);
      if (value !== undefined && value !== null) {
        if (value === msg || value === payload) out.push(`${i}${US}i${US}${US}`);
        else out.push(encodeOutput(i, value, null, msg));
      }
    } catch (e) {
      // running out of memory fails the whole call: the host replaces the instance
      if (e instanceof Error && /out of memory/i.test(e.message)) throw new OutOfMemory(e.message);
      out.push(`${i}${US}r${US}${US}${clean(describe(e))}`);
    }
    if (state.effects && commit !== null) {
      state.effects = false;
      commit(i + 1, out.join(RS));
      out.length = 0;
    }
  }
  state.msg = null;
  state.out = null;
  return out.join(RS);
}
