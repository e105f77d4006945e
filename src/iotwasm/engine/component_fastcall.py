"""The fast call path into components: a `string -> result<…, string>` export through the C API.

wasmtime-py's public `component.Func.__call__` looks the function's type up through FFI and
converts every value through Python on each call (~25 µs for an empty call, ~10 µs of it the
type lookup). A processor's exports have fixed types, checked once when the component is
linked (`component.check_exports`), so each call here fills one preallocated
`wasmtime_component_val_t` with a pointer to the batch bytes, calls
`wasmtime_component_func_call` and reads the result's bytes once.

What the C API expects, and this module guarantees:
- string arguments are borrowed (copied by wasmtime) and must be valid UTF-8 — wasmtime
  `unwrap`s the conversion, so invalid bytes would abort the process: `StringCall` refuses
  them before the call;
- a result slot is overwritten by assignment, which drops what it held: after reading a
  result we delete it and reset the slot to a plain `bool`, so the next call drops nothing.

Every handle keeps a strong reference to its Store, so the Store outlives every call through
it. This is the only place that touches wasmtime's component C API directly. It relies on the
bindings of wasmtime-py 50.0.1 (pinned in pyproject.toml, `fastcall.WASMTIME_VERSION`);
tests/test_component_fastcall.py proves it agrees with the public API.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

import wasmtime
from wasmtime import _bindings as ffi
from wasmtime import _ffi

from .fastcall import CallFailed, ErrPtr, c_entry

if TYPE_CHECKING:
    import wasmtime.component

_U8P = ctypes.POINTER(ctypes.c_uint8)

_func_call = c_entry("wasmtime_component_func_call", ctypes.c_void_p, release_gil=True)   # runs the guest
_val_delete = c_entry("wasmtime_component_val_delete", None)

_STRING = _ffi.WASMTIME_COMPONENT_STRING.value
_RESULT = _ffi.WASMTIME_COMPONENT_RESULT.value
_BOOL = _ffi.WASMTIME_COMPONENT_BOOL.value


class StringCall:
    """A component export taking zero or one `string` and returning `result<T, string>`,
    where T is `string` or nothing. Called as `call(data) -> (ok, bytes | None)`.

    Not thread-safe (one call at a time per instance, as the container guarantees).
    """

    __slots__ = (
        "_arg",
        "_argref",
        "_ctx",
        "_fref",
        "_func",
        "_nargs",
        "_one",
        "_res",
        "_resref",
        "_store",
        "name",
    )

    def __init__(self, store: wasmtime.Store, func: wasmtime.component.Func, name: str,
                 params: int) -> None:
        self.name = name
        self._store = store  # strong: the Store outlives every call through this handle
        self._func = func
        self._fref = ctypes.byref(func._func)
        self._ctx = ctypes.cast(store._context(), ctypes.c_void_p)
        self._arg = ffi.wasmtime_component_val_t()
        self._arg.kind = _STRING
        self._argref = ctypes.byref(self._arg)
        self._nargs = ctypes.c_size_t(params)
        self._res = ffi.wasmtime_component_val_t()
        self._res.kind = _BOOL
        self._resref = ctypes.byref(self._res)
        self._one = ctypes.c_size_t(1)

    def __call__(self, data: bytes | None = None) -> tuple[bool, bytes | None]:
        """Call with `data` (UTF-8 bytes, checked by the caller; see `check_utf8`)."""
        if data is not None:
            s = self._arg.of.string
            s.size = len(data)
            s.data = ctypes.cast(data, _U8P)  # type: ignore[arg-type]  # ctypes takes bytes as char*; borrowed for the call; `data` stays referenced
        err = _func_call(self._fref, self._ctx, self._argref, self._nargs, self._resref, self._one)
        if err:
            raise CallFailed(wasmtime.WasmtimeError._from_ptr(ctypes.cast(err, ErrPtr)))
        res = self._res
        try:
            if res.kind != _RESULT:
                raise CallFailed(wasmtime.WasmtimeError(f"{self.name} returned value kind "
                                                        f"{res.kind}, expected a result"))
            r = res.of.result
            ok = bool(r.is_ok)
            out = None
            if r.val:
                v = r.val.contents
                if v.kind != _STRING:
                    raise CallFailed(wasmtime.WasmtimeError(
                        f"{self.name} returned a result holding value kind {v.kind}"))
                out = ctypes.string_at(v.of.string.data, v.of.string.size)
            return ok, out
        finally:
            if res.kind != _BOOL:
                _val_delete(self._resref)
                res.kind = _BOOL  # the next call assigns over it: leave nothing to drop


def check_utf8(data: bytes) -> bool:
    """True when `data` is valid UTF-8 (ASCII is checked without decoding)."""
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
