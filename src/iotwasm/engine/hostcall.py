"""Host functions without wasmtime-py's trampoline: the other direction of the fast path.

wasmtime-py's `Linker.define_func` converts every argument and result through `Val` objects
and wraps the caller in a `Caller`, ~25 µs per host call; a guest's `iot_init` reading three
config keys spent most of an instance's start-up there. `define_raw` registers the function
with `wasmtime_linker_define_func_unchecked`: wasmtime hands over the raw argument array, and
the function gets the calling guest's memory as a bounds-checked `CallerMemory`.

Like engine/fastcall.py, whose C bindings it shares, it relies on wasmtime-py 50.0.1;
tests/test_host_calls.py checks every host function through it.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import TypeAlias

import wasmtime
from wasmtime import _bindings as ffi

from ..errors import AbiError
from .fastcall import MEMORY, ErrPtr, c_entry, memory_data_fast, memory_data_size_fast, host_failure

_caller_export_get = c_entry("wasmtime_caller_export_get", ctypes.c_bool)
_caller_context = c_entry("wasmtime_caller_context", ctypes.c_void_p)
_trap_new = c_entry("wasmtime_trap_new", ctypes.c_void_p)
_define_unchecked = c_entry("wasmtime_linker_define_func_unchecked", ctypes.c_void_p)
_MEMORY_NAME = b"memory"
_MEMORY_NAME_LEN = ctypes.c_size_t(len(_MEMORY_NAME))


class CallerMemory:
    """The calling guest's exported memory, valid for one host call only.

    Looked up on first use (functions that touch no memory pay nothing). A host function does
    not run guest code, so the memory cannot grow or move while it runs: one size read serves
    every check of the call.
    """

    __slots__ = ("_base", "_caller", "_size")

    def __init__(self, caller: int):
        self._caller = ctypes.c_void_p(caller)
        self._base = 0
        self._size = -1

    def _find(self) -> None:
        item = ffi.wasmtime_extern_t()
        if (not _caller_export_get(self._caller, _MEMORY_NAME, _MEMORY_NAME_LEN,
                                   ctypes.byref(item)) or item.kind != MEMORY):  # type: ignore[comparison-overlap]  # a c_uint8 field reads as int
            raise AbiError("host call from a module without an exported memory")
        ctx = ctypes.c_void_p(_caller_context(self._caller))
        mem = ctypes.byref(item.of.memory)
        self._size = memory_data_size_fast(ctx, mem)
        self._base = memory_data_fast(ctx, mem) or 0

    def size(self) -> int:
        if self._size < 0:
            self._find()
        return self._size

    def read(self, ptr: int, n: int, what: str) -> bytes:
        """`n` bytes at `ptr` (both taken as u32); AbiError naming `what` when outside."""
        ptr &= 0xFFFFFFFF
        n &= 0xFFFFFFFF
        size = self.size()
        if ptr + n > size:
            raise AbiError(f"{what}: range {ptr}+{n} is outside guest memory ({size} bytes)")
        return ctypes.string_at(self._base + ptr, n) if n else b""

    def write(self, ptr: int, data: bytes, what: str, *, noun: str = "range") -> None:
        ptr &= 0xFFFFFFFF
        size = self.size()
        if ptr + len(data) > size:
            raise AbiError(f"{what}: {noun} {ptr}+{len(data)} is outside guest memory ({size} bytes)")
        if data:
            ctypes.memmove(self._base + ptr, data, len(data))


_RawCallback = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p,
                                ctypes.POINTER(ffi.wasmtime_val_raw), ctypes.c_size_t)
_Finalizer = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_RAW_FIELD = {"i32": "i32", "i64": "i64", "f32": "f32", "f64": "f64"}
#: what `define_raw` registers: fn(memory, *wasm numbers) -> the result, or None for none
RawHostFn: TypeAlias = Callable[..., int | float | None]
#: env id -> (function, argument fields, result field or None, "module.name")
_raw_functions: dict[int, tuple[RawHostFn, tuple[str, ...], str | None, str]] = {}
_raw_ids = iter(range(1, 1 << 62))
_raw_lock = threading.Lock()
#: `watch.calls`, when a list, gets the name of every host call this thread makes (a guest's
#: start-up is watched this way before it is snapshotted: engine/snapshot.py)
watch = threading.local()


def _trap(text: str) -> int:
    msg = text.encode("utf-8", "replace")
    return _trap_new(msg, ctypes.c_size_t(len(msg))) or 0


# typeshed leaves CFUNCTYPE prototypes untyped (both decorators below)
@_RawCallback  # type: ignore[untyped-decorator]
def _raw_trampoline(env: int, caller: int, vals: ctypes._Pointer[ffi.wasmtime_val_raw],
                    n: int) -> int:  # pragma: no branch - every path returns
    fn, fields, result, name = _raw_functions[env]
    calls = getattr(watch, "calls", None)
    if calls is not None:
        calls.append(name)
    try:
        out = fn(CallerMemory(caller), *[getattr(vals[i], f) for i, f in enumerate(fields)])
        if result is not None:
            setattr(vals[0], result, out)
        return 0
    except BaseException as e:  # noqa: BLE001 - nothing may unwind through wasm frames
        if getattr(host_failure, "error", None) is not e:
            if isinstance(e, AbiError):
                host_failure.error = e  # a typed refusal: the caller reports it as it is
            else:
                host_failure.error = None  # nothing stale may stand in for this failure
                return _trap(f"host function {name} failed: {type(e).__name__}: {e}")
        return _trap(f"host function {name}: {e}")


@_Finalizer  # type: ignore[untyped-decorator]
def _raw_finalize(env: int) -> None:
    _raw_functions.pop(env, None)  # atomic under the GIL; runs whenever wasmtime drops it


def define_raw(linker: wasmtime.Linker, module: str, name: str, ty: wasmtime.FuncType,
               fn: RawHostFn) -> None:
    """Define `module.name` on `linker` as `fn(memory: CallerMemory, *args)`.

    Arguments arrive as Python numbers of the wasm types of `ty` (i32 as signed); the result,
    when `ty` has one, is stored as that type. An exception traps the calling guest; an
    `AbiError` (or one parked in `host_failure`) is what the caller then reports.
    """
    fields = tuple(_RAW_FIELD[str(p)] for p in ty.params)
    results = [str(r) for r in ty.results]
    if len(results) > 1:
        raise ValueError("raw host functions return at most one value")
    with _raw_lock:
        env = next(_raw_ids)
        _raw_functions[env] = (fn, fields, _RAW_FIELD[results[0]] if results else None,
                               f"{module}.{name}")
    mod, nm = module.encode(), name.encode()
    err = _define_unchecked(linker.ptr(), mod, ctypes.c_size_t(len(mod)), nm,
                            ctypes.c_size_t(len(nm)), ty.ptr(), _raw_trampoline,
                            ctypes.c_void_p(env), _raw_finalize)
    if err:
        with _raw_lock:
            _raw_functions.pop(env, None)
        raise wasmtime.WasmtimeError._from_ptr(ctypes.cast(err, ErrPtr))
