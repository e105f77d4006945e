// The `iot` host functions (docs/abi.md §4), one capability each. A function is imported
// only when the module calls it, and the host links imports by capability: a module needs
// exactly the grants of what it uses.

// @ts-ignore: decorator
@external("iot", "log") declare function iot_log(level: i32, text: usize, len: i32): void;
// @ts-ignore: decorator
@external("iot", "now_ms") declare function iot_now_ms(): i64;
// @ts-ignore: decorator
@external("iot", "random_fill") declare function iot_random_fill(buf: usize, len: i32): void;
// @ts-ignore: decorator
@external("iot", "kv_get") declare function iot_kv_get(key: usize, keyLen: i32, val: usize, cap: i32): i32;
// @ts-ignore: decorator
@external("iot", "kv_set") declare function iot_kv_set(key: usize, keyLen: i32, val: usize, len: i32): i32;
// @ts-ignore: decorator
@external("iot", "kv_delete") declare function iot_kv_delete(key: usize, keyLen: i32): i32;
// @ts-ignore: decorator
@external("iot", "config_get") declare function iot_config_get(key: usize, keyLen: i32, val: usize, cap: i32): i32;
// @ts-ignore: decorator
@external("iot", "twin_get") declare function iot_twin_get(id: usize, idLen: i32, val: usize, cap: i32): i32;
// @ts-ignore: decorator
@external("iot", "metric") declare function iot_metric(kind: i32, name: usize, nameLen: i32, value: f64): void;

export enum Level {
  Debug = 0,
  Info = 1,
  Warn = 2,
  Error = 3,
}

/** A line in the container's log (capability `log`). */
export function log(level: Level, text: string): void {
  const b = String.UTF8.encode(text);
  iot_log(level, changetype<usize>(b), b.byteLength);
}

/** Wall clock, Unix milliseconds (capability `clock`). */
export function nowMs(): i64 {
  return iot_now_ms();
}

/** Cryptographically secure random bytes (capability `random`). */
export function randomBytes(n: i32): Uint8Array {
  const a = new Uint8Array(n);
  iot_random_fill(a.dataStart, n);
  return a;
}

/** A random u64 (capability `random`). */
export function randomU64(): u64 {
  const p = memory.data(8);
  iot_random_fill(p, 8);
  return load<u64>(p);
}

/** Reads through a get-style host function, retrying with the length it reported. */
function readValue(key: string, kv: bool): ArrayBuffer | null {
  const k = String.UTF8.encode(key);
  let buf = new ArrayBuffer(64);
  while (true) {
    const n = kv
      ? iot_kv_get(changetype<usize>(k), k.byteLength, changetype<usize>(buf), buf.byteLength)
      : iot_config_get(changetype<usize>(k), k.byteLength, changetype<usize>(buf), buf.byteLength);
    if (n < 0) return null;
    if (n <= buf.byteLength) return buf.slice(0, n);
    buf = new ArrayBuffer(n);
  }
}

/** The per-container key-value store (capability `kv`); it outlives instances and traps. */
export namespace kv {
  export function get(key: string): Uint8Array | null {
    const v = readValue(key, true);
    return v ? Uint8Array.wrap(v) : null;
  }

  export function getString(key: string): string | null {
    const v = readValue(key, true);
    return v ? String.UTF8.decode(v) : null;
  }

  /** false when the container's kv quota is exceeded. */
  export function set(key: string, value: Uint8Array): bool {
    const k = String.UTF8.encode(key);
    return iot_kv_set(changetype<usize>(k), k.byteLength, value.dataStart, value.byteLength) == 0;
  }

  export function setString(key: string, value: string): bool {
    return set(key, Uint8Array.wrap(String.UTF8.encode(value)));
  }

  /** true when the key existed. */
  export function remove(key: string): bool {
    const k = String.UTF8.encode(key);
    return iot_kv_delete(changetype<usize>(k), k.byteLength) == 0;
  }
}

/** The deployment's read-only config (capability `config`). Read it once, in init. */
export namespace config {
  /** The value of `key`, or null when absent. */
  export function get(key: string): string | null {
    const v = readValue(key, false);
    return v ? String.UTF8.decode(v) : null;
  }

  /** The raw bytes of `key`, or null when absent. */
  export function getBytes(key: string): Uint8Array | null {
    const v = readValue(key, false);
    return v ? Uint8Array.wrap(v) : null;
  }
}

/** Counters and gauges (capability `metrics`). */
export namespace metrics {
  export function counter(name: string, value: f64 = 1): void {
    const b = String.UTF8.encode(name);
    iot_metric(0, changetype<usize>(b), b.byteLength, value);
  }

  export function gauge(name: string, value: f64): void {
    const b = String.UTF8.encode(name);
    iot_metric(1, changetype<usize>(b), b.byteLength, value);
  }
}

/** Device twins (capability `twin`, docs/devices.md): read-only, of the deployment's own namespace. */
export namespace twin {
  /** The twin of device `id` as JSON (reported, desired, delta, versions, last_seen, silent), or
   *  null when the device is unknown. */
  export function get(id: string): string | null {
    const k = String.UTF8.encode(id);
    let buf = new ArrayBuffer(256);
    while (true) {
      const n = iot_twin_get(changetype<usize>(k), k.byteLength, changetype<usize>(buf), buf.byteLength);
      if (n < 0) return null;
      if (n <= buf.byteLength) return String.UTF8.decode(buf.slice(0, n));
      buf = new ArrayBuffer(n);
    }
  }
}
