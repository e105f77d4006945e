"""Bounds-checked access to a guest's linear memory, through wasmtime's C API.

The other half of the fast call path (engine/fastcall.py, whose bindings it uses): every read
and write of a guest's memory by the host goes through here or through the native batch call
(engine/v1_native.py), and is checked against the memory's size first, because a raw copy
past its end would take the node down.
"""

from __future__ import annotations

import ctypes
import struct
from typing import Any

import wasmtime
from wasmtime import _bindings as ffi

from ..errors import AbiError
from .fastcall import ErrPtr, memory_data_fast, memory_data_size_fast, memory_grow, cast_int


class GuestMemory:
    """Bounds-checked access to an instance's linear memory, without an FFI call per access.

    A memoryview over the guest's memory is kept between calls. Linear memory can only grow
    (and move) while the guest runs, so `refresh()` must be called after every call into the
    guest: it re-reads the size (one FFI call) and rebuilds the view when it changed. Every
    write is checked against that size: a raw memmove past the end would take the node down.
    """

    __slots__ = ("_store", "_ctx", "_mem", "_raw", "_keep", "_size", "_view")

    def __init__(self, store: wasmtime.Store, memory: wasmtime.Memory | ffi.wasmtime_extern_t,
                 ctx: ctypes.c_void_p | None = None):
        """`memory` is a wasmtime.Memory or a raw extern from `Exports.get`; `ctx` the
        store's context when the caller has it."""
        self._store = store
        self._ctx = ctx if ctx is not None else ctypes.cast(store._context(), ctypes.c_void_p)
        raw = memory._memory if isinstance(memory, wasmtime.Memory) else memory.of.memory
        self._keep = memory  # the struct must outlive the reference to it
        self._raw = raw
        self._mem = ctypes.byref(raw)
        self._size = -1
        self._view = memoryview(b"")
        self.refresh()

    def refresh(self) -> int:
        size: int = memory_data_size_fast(self._ctx, self._mem)
        if size != self._size:
            self._view.release()
            self._size = size
            if size:
                base = memory_data_fast(self._ctx, self._mem)
                self._view = memoryview((ctypes.c_char * size).from_address(base)).cast("B")
            else:
                self._view = memoryview(b"")
        return size

    def size(self) -> int:
        return self._size

    def addresses(self) -> tuple[int, int]:
        """(store context, memory): what a native reader passes to `wasmtime_memory_data`,
        valid while this object lives."""
        return cast_int(self._ctx), ctypes.addressof(self._raw)

    def grow(self, pages: int) -> None:
        """Grow by `pages` (64 KiB each) as `memory.grow` would, within the store's limits."""
        prev = ctypes.c_uint64(0)
        err = memory_grow(self._ctx, self._mem, ctypes.c_uint64(pages), ctypes.byref(prev))
        if err:
            raise wasmtime.WasmtimeError._from_ptr(ctypes.cast(err, ErrPtr))
        self.refresh()

    def view(self) -> memoryview:
        """The whole memory, valid until the guest next runs (or the memory grows)."""
        return self._view

    def release(self) -> None:
        self._view.release()
        self._size = 0

    def write(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if offset < 0 or end > self._size:
            raise AbiError(f"write of {len(data)} bytes at {offset} is outside guest memory "
                           f"({self._size} bytes)")
        self._view[offset:end] = data

    def unpack_from(self, st: struct.Struct, offset: int) -> tuple[Any, ...]:
        """`st.unpack_from` (a struct.Struct) at `offset`, checked, without copying first."""
        if offset < 0 or offset + st.size > self._size:
            raise AbiError(f"read of {st.size} bytes at {offset} is outside guest memory "
                           f"({self._size} bytes)")
        return st.unpack_from(self._view, offset)

    def read(self, offset: int, n: int) -> bytes:
        if offset < 0 or n < 0 or offset + n > self._size:
            raise AbiError(f"read of {n} bytes at {offset} is outside guest memory "
                           f"({self._size} bytes)")
        return self._view[offset:offset + n].tobytes()
