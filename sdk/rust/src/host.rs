//! The `iot` host functions (docs/abi.md §4), one capability each.
//!
//! A function is imported only when the module calls it (unused code is dropped at link time),
//! and the host links imports by capability: a module needs exactly the grants of what it uses.

#[link(wasm_import_module = "iot")]
extern "C" {
    #[link_name = "log"]
    fn iot_log(level: i32, text: *const u8, len: u32);
    #[link_name = "now_ms"]
    fn iot_now_ms() -> i64;
    #[link_name = "random_fill"]
    fn iot_random_fill(buf: *mut u8, len: u32);
    #[link_name = "kv_get"]
    fn iot_kv_get(key: *const u8, key_len: u32, val: *mut u8, val_cap: u32) -> i32;
    #[link_name = "kv_set"]
    fn iot_kv_set(key: *const u8, key_len: u32, val: *const u8, val_len: u32) -> i32;
    #[link_name = "kv_delete"]
    fn iot_kv_delete(key: *const u8, key_len: u32) -> i32;
    #[link_name = "config_get"]
    fn iot_config_get(key: *const u8, key_len: u32, val: *mut u8, val_cap: u32) -> i32;
    #[link_name = "metric"]
    fn iot_metric(kind: i32, name: *const u8, name_len: u32, value: f64);
}

/// Log levels of [`log`] (capability `log`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Debug = 0,
    Info = 1,
    Warn = 2,
    Error = 3,
}

/// Writes a line to the container's log (capability `log`).
pub fn log(level: Level, text: &str) {
    unsafe { iot_log(level as i32, text.as_ptr(), text.len() as u32) }
}

/// Wall clock, Unix milliseconds (capability `clock`).
pub fn now_ms() -> i64 {
    unsafe { iot_now_ms() }
}

/// Fills `buf` with cryptographically secure random bytes (capability `random`).
pub fn random_fill(buf: &mut [u8]) {
    unsafe { iot_random_fill(buf.as_mut_ptr(), buf.len() as u32) }
}

/// A random u64 (capability `random`).
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    random_fill(&mut b);
    u64::from_le_bytes(b)
}

/// Reads through a get-style host function: -1 absent, else the length, retried with a
/// buffer of that length when the first one was too small.
fn read_value(key: &str, get: unsafe extern "C" fn(*const u8, u32, *mut u8, u32) -> i32) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 64];
    loop {
        let n = unsafe { get(key.as_ptr(), key.len() as u32, buf.as_mut_ptr(), buf.len() as u32) };
        if n < 0 {
            return None;
        }
        let n = n as usize;
        if n <= buf.len() {
            buf.truncate(n);
            return Some(buf);
        }
        buf.resize(n, 0);
    }
}

/// The per-container key-value store (capability `kv`). It outlives instances: state that
/// must survive a trap or a restart belongs here, not in statics.
pub mod kv {
    /// The value of `key`, or `None` when absent.
    pub fn get(key: &str) -> Option<Vec<u8>> {
        super::read_value(key, super::iot_kv_get)
    }

    /// Stores `value` under `key`; `Err(())` when the container's kv quota is exceeded.
    pub fn set(key: &str, value: &[u8]) -> Result<(), ()> {
        match unsafe { super::iot_kv_set(key.as_ptr(), key.len() as u32, value.as_ptr(), value.len() as u32) } {
            0 => Ok(()),
            _ => Err(()),
        }
    }

    /// Deletes `key`; `true` when it existed.
    pub fn delete(key: &str) -> bool {
        unsafe { super::iot_kv_delete(key.as_ptr(), key.len() as u32) == 0 }
    }
}

/// The deployment's read-only config map (capability `config`, always granted by nodes and
/// `iotwasm run`). Each call is a host round trip: read config once, in `Module::init`.
pub mod config {
    use crate::json::parse_f64;

    /// The raw value of `key`, or `None` when absent.
    pub fn get(key: &str) -> Option<Vec<u8>> {
        super::read_value(key, super::iot_config_get)
    }

    /// The value of `key` as text; `Ok(None)` when absent, `Err(())` when not UTF-8.
    pub fn string(key: &str) -> Result<Option<String>, ()> {
        match get(key) {
            None => Ok(None),
            Some(v) => String::from_utf8(v).map(Some).map_err(|_| ()),
        }
    }

    /// The value of `key` as a number (surrounding whitespace ignored; `inf`, `-inf`, `nan`
    /// accepted); `Ok(None)` when absent, `Err(())` when present but not a number.
    pub fn number(key: &str) -> Result<Option<f64>, ()> {
        let v = match get(key) {
            None => return Ok(None),
            Some(v) => v,
        };
        let ws = |c: &u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r');
        let start = v.iter().position(|c| !ws(c)).unwrap_or(v.len());
        let end = v.iter().rposition(|c| !ws(c)).map_or(start, |i| i + 1);
        let text = &v[start..end];
        match parse_f64(text) {
            Some((x, n)) if n == text.len() && n > 0 => Ok(Some(x)),
            _ => Err(()),
        }
    }
}

/// Counters and gauges (capability `metrics`), exported with the container's metrics.
pub mod metrics {
    /// Adds `value` to counter `name`.
    pub fn counter(name: &str, value: f64) {
        unsafe { super::iot_metric(0, name.as_ptr(), name.len() as u32, value) }
    }

    /// Sets gauge `name` to `value`.
    pub fn gauge(name: &str, value: f64) {
        unsafe { super::iot_metric(1, name.as_ptr(), name.len() as u32, value) }
    }
}
