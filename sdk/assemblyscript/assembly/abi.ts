// The iotwasm ABI v1 (docs/abi.md): the exports, the batch loop, output records, and
// exceptions turned into rejects.
//
// `throw` in a handler becomes a reject of that input, with the error's message as the
// dead-letter text. AssemblyScript has no try/catch: a throw calls `abort`, which never
// returns. The SDK's abort (installed with `--use abort=...`, which `iotwasm build` passes)
// writes the reject record, marks the input done in the output header, handles the rest of
// the batch from inside abort, and then traps. The host keeps every input below
// `inputs_done` when a call traps, and with all of them done it loses nothing; it replaces
// the instance afterwards (module state is rebuilt by init). Each throw nests one level
// deeper, so a batch with very many throws can exhaust the wasm stack: the input at which
// that happens is dead-lettered as a trap, and the rest of the batch goes on.
import { Bytes } from "./bytes";
import { Buf } from "./buf";

const OUT_HEADER: u32 = 8;
const OUT_RECORD_HEADER: u32 = 16;
const IN_RECORD_HEADER: u32 = 16;
const KIND_MESSAGE: u32 = 0;
const KIND_ERROR: u32 = 1;

export const IOT_OK: i32 = 0;
export const IOT_OUTPUT_FULL: i32 = 1;
export const IOT_ERR_FRAMING: i32 = -1;
export const IOT_ERR_INTERNAL: i32 = -2;
const NOT_OPEN: u32 = 0xffffffff;

/** One input message, valid during the handler call only (the SDK reuses it). */
export class Message {
  timestampMs: i64 = 0;
  topic: Bytes = new Bytes();
  payload: Bytes = new Bytes();
  /** Position in the current batch, 0-based. */
  index: u32 = 0;

  /** The payload decoded as UTF-8 text. */
  text(): string {
    return this.payload.toString();
  }

  /** The topic as text. */
  topicString(): string {
    return this.topic.toString();
  }
}

/** The output buffer of the current batch. When a record does not fit, the output is marked
 * full and later writes for this input are ignored: the SDK then has the host call again
 * with more room, from this input on, which runs again from the start. */
export class Output {
  base: usize = 0;     // the 8-byte header, then records
  cap: u32 = 0;        // bytes available for records
  used: u32 = 0;       // bytes of records written so far
  input: u32 = 0;      // index of the input being handled
  open: u32 = NOT_OPEN; // a record begun with begin(), until end()
  full: bool = false;
  private buf: Buf = new Buf();

  private publish(): void {
    store<u32>(this.base, this.used);
  }

  private reserve(topicLen: u32, payloadLen: u32): usize {
    if (this.full) return 0;
    const room = this.cap - this.used;
    if (room < OUT_RECORD_HEADER || topicLen > room - OUT_RECORD_HEADER ||
        payloadLen > room - OUT_RECORD_HEADER - topicLen) {
      this.full = true;
      return 0;
    }
    return this.base + <usize>(OUT_HEADER + this.used);
  }

  /** A record (message or error) of raw bytes; false when it did not fit. */
  record(kind: u32, topic: usize, topicLen: u32, payload: usize, payloadLen: u32): bool {
    if (this.open != NOT_OPEN) throw new Error("a record is open: call end() first");
    const r = this.reserve(topicLen, payloadLen);
    if (!r) return false;
    store<u32>(r, this.input);
    store<u32>(r, kind, 4);
    store<u32>(r, topicLen, 8);
    store<u32>(r, payloadLen, 12);
    memory.copy(r + OUT_RECORD_HEADER, topic, topicLen);
    memory.copy(r + OUT_RECORD_HEADER + topicLen, payload, payloadLen);
    this.used += OUT_RECORD_HEADER + topicLen + payloadLen;
    this.publish();
    return true;
  }

  /** Emits bytes (e.g. the input payload) on the route's default output topic. */
  emit(payload: Bytes): void {
    this.record(KIND_MESSAGE, 0, 0, payload.ptr, payload.length);
  }

  /** Emits bytes on `topic` ("" = the default output topic). */
  emitTo(topic: string, payload: Bytes): void {
    const t = String.UTF8.encode(topic);
    this.record(KIND_MESSAGE, changetype<usize>(t), t.byteLength, payload.ptr, payload.length);
  }

  /** Emits a string (UTF-8) on `topic` ("" = the default output topic). */
  emitString(payload: string, topic: string = ""): void {
    const t = String.UTF8.encode(topic), p = String.UTF8.encode(payload);
    this.record(KIND_MESSAGE, changetype<usize>(t), t.byteLength, changetype<usize>(p), p.byteLength);
  }

  /** Dead-letters the current input with `text` and lets the handler go on (throwing does
   * the same and ends the handler). */
  reject(text: string): void {
    const p = String.UTF8.encode(text);
    this.record(KIND_ERROR, 0, 0, changetype<usize>(p), p.byteLength);
  }

  /** Same with the text as bytes. */
  rejectBytes(text: Bytes): void {
    this.record(KIND_ERROR, 0, 0, text.ptr, text.length);
  }

  /** Starts a message built in place in the output buffer (no copy); finish with end(). */
  begin(topic: string = ""): Buf {
    if (this.open != NOT_OPEN) throw new Error("a record is open: call end() first");
    const t = String.UTF8.encode(topic);
    const tl = <u32>t.byteLength;
    const r = this.reserve(tl, 0);
    if (!r) return this.buf.reset(0, 0).char(0); // overflowed: writes are ignored
    store<u32>(r, this.input);
    store<u32>(r, KIND_MESSAGE, 4);
    store<u32>(r, tl, 8);
    memory.copy(r + OUT_RECORD_HEADER, changetype<usize>(t), tl);
    this.open = this.used;
    return this.buf.reset(r + OUT_RECORD_HEADER + tl, <i32>(this.cap - this.used - OUT_RECORD_HEADER - tl));
  }

  /** Finishes the message begun with begin(); false when it did not fit. */
  end(b: Buf): bool {
    if (this.open == NOT_OPEN) return false;
    const r = this.base + <usize>(OUT_HEADER + this.open);
    this.open = NOT_OPEN;
    if (b.overflow) {
      this.full = true;
      return false;
    }
    store<u32>(r, <u32>b.length, 12);
    this.used += OUT_RECORD_HEADER + load<u32>(r, 8) + <u32>b.length;
    this.publish();
    return true;
  }
}

export type Handler = (msg: Message, out: Output) => void;
export type Init = () => i32;

let handler: Handler | null = null;
let initFn: Init | null = null;

/** Declares the module: `handle` runs per message; `init` (optional) once per instance,
 * before any message, returning 0 or a non-zero code that refuses to start. Call it at
 * the top level of the entry file. */
export function register(handle: Handler, init: Init | null = null): void {
  handler = handle;
  initFn = init;
}

// -- the batch loop ---------------------------------------------------------------------------
// Created on first use: abort (iotAbort) reads these, and a global whose initializer
// allocates would have the compiler resolve abort while still compiling that global.
let outRef: Output | null = null;
let msgRef: Message | null = null;
let inPtr: usize = 0;
let inLen: u32 = 0;
let count: u32 = 0;
let inBatch = false;
let inputStart: u32 = 0; // out.used when the current input started
let nextPos: u32 = 0;    // where the input after the current one starts

/** Handles inputs from `i` (starting at byte `pos`) to the end of the batch. */
function run(i: u32, pos: u32): i32 {
  const h = handler;
  if (!h) return IOT_ERR_INTERNAL;
  const out = outRef!, msg = msgRef!;
  for (; i < count; i++) {
    // The host frames the input, but a bad frame must fail cleanly, never read past it.
    if (inLen - pos < IN_RECORD_HEADER) return IOT_ERR_FRAMING;
    const rec = inPtr + <usize>pos;
    const topicLen = load<u32>(rec, 8);
    const payloadLen = load<u32>(rec, 12);
    const rest = inLen - pos - IN_RECORD_HEADER;
    if (topicLen > rest || payloadLen > rest - topicLen) return IOT_ERR_FRAMING;
    msg.timestampMs = load<i64>(rec);
    msg.topic.set(rec + IN_RECORD_HEADER, topicLen);
    msg.payload.set(rec + IN_RECORD_HEADER + topicLen, payloadLen);
    msg.index = i;
    pos += IN_RECORD_HEADER + topicLen + payloadLen;
    nextPos = pos;
    out.input = i;
    out.open = NOT_OPEN;
    inputStart = out.used;
    h(msg, out);
    out.open = NOT_OPEN; // a begin() without end() never counted: dropped
    if (out.full) {
      // redone from scratch on the next call: its records must not be delivered now
      out.used = inputStart;
      store<u32>(out.base, out.used);
      return IOT_OUTPUT_FULL;
    }
    store<u32>(out.base, i + 1, 4);
  }
  return IOT_OK;
}

export function iot_process(inP: usize, inL: u32, n: u32, outP: usize, outCap: u32): i32 {
  if (outCap < OUT_HEADER) return IOT_ERR_INTERNAL;
  if (!outRef) outRef = new Output();
  if (!msgRef) msgRef = new Message();
  const out = outRef!;
  inPtr = inP;
  inLen = inL;
  count = n;
  out.base = outP;
  out.cap = outCap - OUT_HEADER;
  out.used = 0;
  out.full = false;
  out.open = NOT_OPEN;
  store<u64>(outP, 0);
  inBatch = true;
  const rc = run(0, 0);
  inBatch = false;
  __collect(); // the minimal runtime collects only when asked, between calls
  return rc;
}

export function iot_init(): i32 {
  const f = initFn;
  if (!f) return 0;
  const rc = f();
  __collect();
  return rc;
}

export function iot_abi_version(): i32 {
  return 1;
}

/** The host's buffers are raw blocks of the runtime's allocator, outside the GC. */
export function iot_alloc(size: usize): usize {
  return heap.alloc(size ? size : 1);
}

export function iot_free(ptr: usize, size: u32): void {
  if (ptr) heap.free(ptr);
}

/** Installed as `abort` (throw, failed assertions, runtime errors): see the top of the file. */
export function iotAbort(message: string | null, fileName: string | null, line: u32, column: u32): void {
  if (!inBatch) unreachable(); // in init or outside a call: a plain trap
  const out = outRef!;
  let text = message ? message : "abort";
  if (fileName && fileName.startsWith("~lib/")) {
    text = text + " (" + fileName + ":" + line.toString() + ":" + column.toString() + ")";
  }
  // drop what the input emitted before it threw, as C and Rust handlers' rejects do not
  out.full = false;
  out.open = NOT_OPEN;
  out.used = inputStart;
  store<u32>(out.base, out.used);
  const p = String.UTF8.encode(text);
  if (!out.record(KIND_ERROR, 0, 0, changetype<usize>(p), p.byteLength)) unreachable();
  const i = out.input;
  store<u32>(out.base, i + 1, 4);
  run(i + 1, nextPos);
  // Whatever run() ended with, the header says what is complete; a trap hands it to the
  // host (an OK batch is then complete, anything else ends at inputs_done).
  unreachable();
}
