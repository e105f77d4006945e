//! Guest SDK for iotwasm ABI v1 modules (docs/abi.md), the Rust counterpart of
//! `sdk/c/iotwasm.h`. A module is a type implementing [`Module`]:
//!
//! ```ignore
//! use iotwasm::{Message, Module, Output};
//!
//! struct Pass;
//!
//! impl Module for Pass {
//!     fn init() -> Result<Self, i32> { Ok(Pass) }
//!     fn handle(&mut self, msg: &Message, out: &mut Output) -> iotwasm::Result {
//!         out.emit(msg.payload)
//!     }
//! }
//! iotwasm::export!(Pass);
//! ```
//!
//! `handle` runs once per input message. It emits zero or more messages with
//! [`Output::emit`] / [`Output::emit_to`] / [`Output::emit_with`] and returns `Ok(())`, or
//! returns `Err(iotwasm::reject!("..."))` to dead-letter the input with that text (messages
//! already emitted for it are kept). `?` on an emit passes "output buffer full" up, and the
//! host calls again with more room. The output header is kept current after every record,
//! so a trap in the middle of a batch loses nothing (docs/abi.md §3).
//!
//! A panic is a trap: the host dead-letters the input it happened in ("unreachable
//! executed") and goes on with the rest of the batch on a fresh instance, whose `init` runs
//! again. Use `Err` for inputs you refuse, panics for bugs.
//!
//! Host functions: [`log`], [`now_ms`], [`random_fill`], [`kv`], [`config`], [`metrics`];
//! each needs its capability, and is imported only when the module calls it. JSON field
//! access: [`json`]; building output in place: [`Buf`].
//!
//! Build: `cargo build --release --target wasm32-unknown-unknown` with `crate-type =
//! ["cdylib"]` (`iotwasm build` does it, with the flags that make builds reproducible).

mod buf;
mod host;
pub mod json;

pub use buf::Buf;
pub use host::{config, kv, log, metrics, now_ms, random_fill, random_u64, Level};

use std::alloc::{alloc, dealloc, Layout};

/// ABI version this crate implements.
pub const ABI_VERSION: i32 = 1;

const OUT_HEADER: usize = 8;
const OUT_RECORD_HEADER: usize = 16;
const IN_RECORD_HEADER: usize = 16;
const KIND_MESSAGE: u32 = 0;
const KIND_ERROR: u32 = 1;

/// `iot_process` return values (docs/abi.md §3).
pub const IOT_OK: i32 = 0;
pub const IOT_OUTPUT_FULL: i32 = 1;
pub const IOT_ERR_FRAMING: i32 = -1;
pub const IOT_ERR_INTERNAL: i32 = -2;

/// Why an input was not handled to the end.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// Dead-letter the input with this text.
    Reject(String),
    /// An output did not fit: the host calls again (with more room) from this input on,
    /// which then runs again from the start. Returned by the emit functions; pass it on.
    OutputFull,
    /// Give up on the input with a negative code: handled by the host like a trap.
    Fail(i32),
}

impl From<&str> for Error {
    fn from(text: &str) -> Self {
        Error::Reject(text.to_string())
    }
}

impl From<String> for Error {
    fn from(text: String) -> Self {
        Error::Reject(text)
    }
}

/// What a handler returns.
pub type Result<T = (), E = Error> = core::result::Result<T, E>;

/// `Error::Reject` with a formatted text: `return Err(reject!("field {:?} missing", name))`.
#[macro_export]
macro_rules! reject {
    ($($arg:tt)*) => { $crate::Error::Reject(format!($($arg)*)) };
}

/// One input message. Borrowed from the host's input buffer for the handler call.
pub struct Message<'a> {
    /// When the host received it, Unix ms.
    pub timestamp_ms: i64,
    /// The topic's bytes (UTF-8 from the host); [`Message::topic`] as text.
    pub topic_bytes: &'a [u8],
    pub payload: &'a [u8],
    /// Position in the current batch, 0-based.
    pub index: u32,
}

impl<'a> Message<'a> {
    pub fn topic(&self) -> &'a str {
        core::str::from_utf8(self.topic_bytes).unwrap_or("")
    }
}

/// A module: built once per instance by `init` (read config there: each host call is a
/// round trip), then `handle` per message.
pub trait Module: Sized {
    /// `Err(code)` refuses to start: the container reports "iot_init returned code"
    /// (use non-zero codes; 0 is reported as 1).
    fn init() -> Result<Self, i32>;
    fn handle(&mut self, msg: &Message, out: &mut Output) -> Result;
}

/// The output buffer of the current batch.
pub struct Output<'a> {
    buf: &'a mut [u8], // header, then records
    used: usize,       // bytes of records written
    input: u32,
    full: bool,
}

impl<'a> Output<'a> {
    fn publish(&mut self) {
        put32(self.buf, 0, self.used as u32);
    }

    /// Where a record with this topic and payload fits, or marks the output full. Once full,
    /// everything else for this input is refused too: the input is redone next call.
    fn reserve(&mut self, topic_len: usize, payload_len: usize) -> Result<usize> {
        if self.full {
            return Err(Error::OutputFull);
        }
        let at = OUT_HEADER + self.used;
        let room = self.buf.len() - at;
        if room < OUT_RECORD_HEADER || topic_len > room - OUT_RECORD_HEADER
            || payload_len > room - OUT_RECORD_HEADER - topic_len
        {
            self.full = true;
            return Err(Error::OutputFull);
        }
        Ok(at)
    }

    fn record(&mut self, kind: u32, topic: &[u8], payload: &[u8]) -> Result {
        let at = self.reserve(topic.len(), payload.len())?;
        put32(self.buf, at, self.input);
        put32(self.buf, at + 4, kind);
        put32(self.buf, at + 8, topic.len() as u32);
        put32(self.buf, at + 12, payload.len() as u32);
        let t = at + OUT_RECORD_HEADER;
        self.buf[t..t + topic.len()].copy_from_slice(topic);
        self.buf[t + topic.len()..t + topic.len() + payload.len()].copy_from_slice(payload);
        self.used += OUT_RECORD_HEADER + topic.len() + payload.len();
        self.publish();
        Ok(())
    }

    /// Emits a message on the route's default output topic.
    pub fn emit(&mut self, payload: &[u8]) -> Result {
        self.record(KIND_MESSAGE, &[], payload)
    }

    /// Emits a message on `topic` (empty: the default output topic).
    pub fn emit_to(&mut self, topic: &str, payload: &[u8]) -> Result {
        self.record(KIND_MESSAGE, topic.as_bytes(), payload)
    }

    /// Emits a message built in place in the output buffer (no copy): `build` appends the
    /// payload to the [`Buf`] it is given. When it outgrows the room left, the result is
    /// `Err(OutputFull)` exactly as with [`Output::emit`].
    pub fn emit_with(&mut self, topic: &str, build: impl FnOnce(&mut Buf)) -> Result {
        let topic = topic.as_bytes();
        let at = self.reserve(topic.len(), 0)?;
        let start = at + OUT_RECORD_HEADER + topic.len();
        let len = {
            let mut b = Buf::new(&mut self.buf[start..]);
            build(&mut b);
            if b.overflowed() {
                self.full = true;
                return Err(Error::OutputFull);
            }
            b.len()
        };
        put32(self.buf, at, self.input);
        put32(self.buf, at + 4, KIND_MESSAGE);
        put32(self.buf, at + 8, topic.len() as u32);
        put32(self.buf, at + 12, len as u32);
        self.buf[at + OUT_RECORD_HEADER..start].copy_from_slice(topic);
        self.used += OUT_RECORD_HEADER + topic.len() + len;
        self.publish();
        Ok(())
    }

    /// Dead-letters the current input with `text` (any bytes, usually UTF-8) and lets the
    /// handler go on; returning `Err(Error::Reject(..))` does the same and ends the handler.
    pub fn reject(&mut self, text: impl AsRef<[u8]>) -> Result {
        self.record(KIND_ERROR, &[], text.as_ref())
    }
}

#[inline(always)]
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[inline(always)]
fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The batch loop behind `iot_process` (docs/abi.md §2-3); `export!` calls it.
///
/// # Safety
/// The pointers are the host's buffers as passed to `iot_process`.
#[inline(always)]
pub unsafe fn process_batch<F>(in_ptr: *const u8, in_len: u32, count: u32, out_ptr: *mut u8, out_cap: u32,
                               mut handler: F) -> i32
where
    F: FnMut(&Message, &mut Output) -> Result,
{
    if (out_cap as usize) < OUT_HEADER {
        return IOT_ERR_INTERNAL;
    }
    let input = core::slice::from_raw_parts(in_ptr, in_len as usize);
    let mut out = Output { buf: core::slice::from_raw_parts_mut(out_ptr, out_cap as usize), used: 0, input: 0, full: false };
    put32(out.buf, 0, 0);
    put32(out.buf, 4, 0);
    let mut pos = 0usize;
    for i in 0..count {
        // The host frames the input, but a bad frame must fail cleanly, never read past it.
        if input.len() - pos < IN_RECORD_HEADER {
            return IOT_ERR_FRAMING;
        }
        let topic_len = get32(input, pos + 8) as usize;
        let payload_len = get32(input, pos + 12) as usize;
        let rest = input.len() - pos - IN_RECORD_HEADER;
        if topic_len > rest || payload_len > rest - topic_len {
            return IOT_ERR_FRAMING;
        }
        let t = pos + IN_RECORD_HEADER;
        let msg = Message {
            timestamp_ms: (get32(input, pos) as u64 | (get32(input, pos + 4) as u64) << 32) as i64,
            topic_bytes: &input[t..t + topic_len],
            payload: &input[t + topic_len..t + topic_len + payload_len],
            index: i,
        };
        pos = t + topic_len + payload_len;
        out.input = i;
        let start = out.used;
        let mut rc = match handler(&msg, &mut out) {
            Ok(()) => IOT_OK,
            Err(Error::Reject(text)) => match out.record(KIND_ERROR, &[], text.as_bytes()) {
                Ok(()) => IOT_OK,
                Err(_) => IOT_OUTPUT_FULL,
            },
            Err(Error::OutputFull) => IOT_OUTPUT_FULL,
            Err(Error::Fail(code)) => if code < 0 { code } else { IOT_ERR_INTERNAL },
        };
        if out.full {
            rc = IOT_OUTPUT_FULL;
        }
        if rc != IOT_OK {
            // This input is redone from scratch (or dead-lettered by the host): its records
            // must not be delivered, so roll back to where it started.
            out.used = start;
            out.publish();
            return rc;
        }
        put32(out.buf, 4, i + 1);
    }
    IOT_OK
}

/// Defines the exports `iot_init` and `iot_process` for a [`Module`] type.
#[macro_export]
macro_rules! export {
    ($module:ty) => {
        static mut __IOTWASM_MODULE: Option<$module> = None;

        #[no_mangle]
        pub extern "C" fn iot_init() -> i32 {
            match <$module as $crate::Module>::init() {
                Ok(m) => {
                    unsafe { __IOTWASM_MODULE = Some(m) };
                    0
                }
                Err(0) => 1,
                Err(code) => code,
            }
        }

        #[no_mangle]
        pub unsafe extern "C" fn iot_process(in_ptr: *const u8, in_len: u32, count: u32, out_ptr: *mut u8,
                                             out_cap: u32) -> i32 {
            let m = match __IOTWASM_MODULE.as_mut() {
                Some(m) => m,
                None => return $crate::IOT_ERR_INTERNAL,
            };
            $crate::process_batch(in_ptr, in_len, count, out_ptr, out_cap, |msg, out| {
                <$module as $crate::Module>::handle(m, msg, out)
            })
        }
    };
}

// -- exports every module has --------------------------------------------------------------

const ALIGN: usize = 16;

/// The host's buffers (and anything else) come from Rust's global allocator.
#[no_mangle]
pub extern "C" fn iot_alloc(size: u32) -> *mut u8 {
    match Layout::from_size_align((size as usize).max(1), ALIGN) {
        Ok(layout) => unsafe { alloc(layout) },
        Err(_) => core::ptr::null_mut(),
    }
}

#[no_mangle]
pub unsafe extern "C" fn iot_free(ptr: *mut u8, size: u32) {
    if !ptr.is_null() {
        if let Ok(layout) = Layout::from_size_align((size as usize).max(1), ALIGN) {
            dealloc(ptr, layout);
        }
    }
}

#[no_mangle]
pub extern "C" fn iot_abi_version() -> i32 {
    ABI_VERSION
}
