"""The fast call path: typed, cached entries into wasm (guest memory: engine/guest_memory.py).

wasmtime-py's public `Func.__call__` rebuilds the function type through FFI on every call
(~30 µs). The hot path instead calls `wasmtime_func_call_unchecked` through ctypes with a
preallocated array of raw values (~1.4 µs). "Unchecked" means wasmtime trusts the caller about
the signature, so `RawFunc` checks the export's type once, when it is bound, and only ever
passes i32 arguments. ctypes releases the GIL for the duration of the call, so wasm runs in
parallel with other Python threads.

Every handle here (RawFunc, Exports, StoreControl, and GuestMemory) keeps a raw pointer into its
Store's context, so each also holds a strong reference to the Store: the Store cannot be freed
while anyone can still call through a handle. Dropping a Store while a call runs in it makes
wasmtime abort the process; the container pool's other half of that rule is never to close an
instance that is in use (see docs/engine.md, "Store lifetime").

This module, with engine/guest_memory.py, engine/hostcall.py (host functions the same way)
and the native batch call (engine/v1_native.py), is the only place that touches wasmtime's C
API directly. It relies on the bindings of wasmtime-py 50.0.1 (pinned in
pyproject.toml); tests/test_fastcall.py proves it agrees with the public API.
"""

from __future__ import annotations

import ctypes
import threading
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import wasmtime
from wasmtime import _bindings as ffi
from wasmtime import _ffi

from ..errors import AbiError

if TYPE_CHECKING:
    from _ctypes import CFuncPtr

    from .ticker import EpochTicker

WASMTIME_VERSION = "50.0.1"
T = TypeVar("T")


# The same library, called without releasing the GIL: for the short accessors below a GIL
# release is pure cost, and on a worker thread each release lets the busy event loop take the
# GIL, which the worker then waits to get back (up to the interpreter's switch interval).
_held = ctypes.PyDLL(_ffi.dll._name, handle=_ffi.dll._handle)


def c_entry(symbol: str, restype: type[Any] | None, *, release_gil: bool = False) -> CFuncPtr:
    """The C symbol with no argtypes: callers pass ready-made ctypes values, nothing is guessed.

    Only a call that runs guest code releases the GIL (`release_gil`): wasm then runs in
    parallel with other Python threads. Accessors that return at once keep it."""
    lib = _ffi.dll if release_gil else _held
    fn: CFuncPtr = type(getattr(lib, symbol))((symbol, lib))
    fn.restype = restype
    fn.argtypes = None  # type: ignore[assignment]  # None: no per-argument conversion
    return fn


# Without argtypes ctypes skips per-argument conversion, which is most of the cost of a call.
# Every argument is passed as a ready-made ctypes object of the right C type.
_call_unchecked = c_entry("wasmtime_func_call_unchecked", ctypes.c_void_p, release_gil=True)

memory_data_fast = c_entry("wasmtime_memory_data", ctypes.c_void_p)
memory_data_size_fast = c_entry("wasmtime_memory_data_size", ctypes.c_size_t)
_set_epoch_deadline_fast = c_entry("wasmtime_context_set_epoch_deadline", None)
_set_fuel = c_entry("wasmtime_context_set_fuel", ctypes.c_void_p)
_global_get = c_entry("wasmtime_global_get", None)
_global_set = c_entry("wasmtime_global_set", ctypes.c_void_p)
memory_grow = c_entry("wasmtime_memory_grow", ctypes.c_void_p)
_get_fuel = c_entry("wasmtime_context_get_fuel", ctypes.c_void_p)

_TrapPtr = ctypes.POINTER(ffi.wasm_trap_t)
ErrPtr = ctypes.POINTER(ffi.wasmtime_error_t)

_I32 = "i32"


class CallFailed(Exception):
    """Internal: a raw call trapped or errored. `cause` is the wasmtime Trap or WasmtimeError."""

    def __init__(self, cause: Exception):
        super().__init__(str(cause))
        self.cause = cause


# Host functions run on the thread that called into wasm. When one of ours fails, it parks the
# typed error here before trapping, so the caller on the same thread can report the real cause
# instead of wasmtime-py's process-wide "python exception" slot.
host_failure = threading.local()


def take_host_failure() -> Exception | None:
    err = getattr(host_failure, "error", None)
    host_failure.error = None
    # wasmtime-py also remembers the exception globally; clear it so that a later, unrelated
    # call through the public API does not re-raise it.
    from wasmtime import _func

    _func.LAST_EXCEPTION = None
    return err


class CallSlots:
    """The raw value array, its per-slot views and the trap slot, shared by the RawFuncs of
    one instance.

    Calls into one instance never overlap (the pool hands an instance to one caller at a
    time, and host functions do not call back into their guest), so one set serves every
    export; building the views costs ~1.5 µs per function, a large part of an instance's
    start-up."""

    __slots__ = ("args", "trap", "trap_ref", "vals")

    def __init__(self, n: int = 5):
        self.vals = vals = (ffi.wasmtime_val_raw * n)()
        self.args = tuple(vals[i] for i in range(n))
        self.trap = _TrapPtr()
        self.trap_ref = ctypes.byref(self.trap)


_NVALS = tuple(ctypes.c_size_t(i) for i in range(17))  # read-only: passed by value


class RawFunc:
    """A wasm export bound once and called many times with i32 arguments."""

    __slots__ = ("name", "_store", "_ctx", "_keep", "_struct", "_func", "_vals", "_args", "_nvals",
                 "_trap", "_trap_ref", "_result")

    def __init__(self, store: wasmtime.Store, func: wasmtime.Func | ffi.wasmtime_extern_t, name: str,
                 params: int, results: tuple[str, ...] = (_I32,), *, verify: bool = True,
                 ctx: ctypes.c_void_p | None = None, slots: CallSlots | None = None):
        """Bind `func` (a wasmtime.Func, or a raw extern from `Exports.get`).

        `verify=False` is for callers that already checked the module's export type (see
        `signature`), which saves ~100 µs per instance; `ctx`, the store's context as
        `Exports.ctx` has it, saves looking it up again; `slots` are shared with the other
        functions of the same instance (see CallSlots)."""
        if verify:
            if not isinstance(func, wasmtime.Func):
                func = wasmtime.Func._from_raw(func.of.func)
            ty = func.type(store)
            have = f"({', '.join(str(p) for p in ty.params)}) -> ({', '.join(str(r) for r in ty.results)})"
            if have != signature(params, results):
                raise AbiError(f"export {name} has signature {have}, expected "
                               f"{signature(params, results)}")
        self.name = name
        self._store = store  # the context pointer below is only valid while the Store lives
        self._ctx = ctx if ctx is not None else ctypes.cast(store._context(), ctypes.c_void_p)
        self._keep = func  # the struct must outlive the reference to it
        self._struct = func._func if isinstance(func, wasmtime.Func) else func.of.func
        self._func = ctypes.byref(self._struct)
        n = max(params, len(results), 1)
        if slots is None or len(slots.args) < n:
            slots = CallSlots(n)
        self._nvals = _NVALS[n] if n < len(_NVALS) else ctypes.c_size_t(n)
        self._vals = slots.vals
        self._args = slots.args[:params]  # views into _vals
        self._trap = slots.trap
        self._trap_ref = slots.trap_ref
        self._result = results[0] if results else None

    def __call__(self, *args: int) -> int | None:
        for slot, a in zip(self._args, args):
            slot.i32 = a
        err = _call_unchecked(self._ctx, self._func, self._vals, self._nvals, self._trap_ref)
        if err:
            raise CallFailed(wasmtime.WasmtimeError._from_ptr(ctypes.cast(err, ErrPtr)))
        if self._trap:
            # hand the trap to its own pointer object and null ours in place, so the
            # preallocated reference stays valid for the next call
            trap = ctypes.cast(self._trap, _TrapPtr)
            ctypes.memset(ctypes.addressof(self._trap), 0, ctypes.sizeof(self._trap))
            raise CallFailed(wasmtime.Trap._from_ptr(trap))
        if self._result is None:
            return None
        if self._result == "i64":
            return self._vals[0].i64
        return self._vals[0].i32


    def addresses(self) -> tuple[int, int, int]:
        """(store context, function, value array): what a native caller passes to
        `wasmtime_func_call_unchecked`, valid while this object lives."""
        return (cast_int(self._ctx), ctypes.addressof(self._struct), ctypes.addressof(self._vals))


def cast_int(p: ctypes.c_void_p) -> int:
    """The address a c_void_p holds (0 for NULL)."""
    return p.value or 0


def call_failure(err: int, trap: int) -> CallFailed:
    """The CallFailed of a raw call made outside RawFunc (engine/v1_native.py), from the error
    or trap pointer it returned; the Python objects take ownership of them."""
    if err:
        return CallFailed(wasmtime.WasmtimeError._from_ptr(ctypes.cast(ctypes.c_void_p(err), ErrPtr)))
    return CallFailed(wasmtime.Trap._from_ptr(ctypes.cast(ctypes.c_void_p(trap), _TrapPtr)))


def signature(params: int, results: tuple[str, ...] = (_I32,)) -> str:
    """The type string of an i32-only function, as `iotwasm.engine.module` renders types."""
    return f"({', '.join([_I32] * params)}) -> ({', '.join(results)})"


_export_get = c_entry("wasmtime_instance_export_get", ctypes.c_bool)


class Exports:
    """Export lookup by name on one instance, without building the map of all exports.

    Returns raw `wasmtime_extern_t` items: `.of.func` for RawFunc, `.of.memory` for
    GuestMemory. Creating instances is on the path of cold starts and recycling after traps,
    so it avoids wasmtime-py's per-export Python objects.
    """

    __slots__ = ("_inst", "_store", "ctx")

    def __init__(self, store: wasmtime.Store, instance: wasmtime.Instance,
                 ctx: ctypes.c_void_p | None = None):
        self._store = store
        self.ctx = ctx if ctx is not None else ctypes.cast(store._context(), ctypes.c_void_p)
        self._inst = ctypes.byref(instance._instance)

    def get(self, name: bytes, kind: int) -> ffi.wasmtime_extern_t | None:
        item = ffi.wasmtime_extern_t()
        if not _export_get(self.ctx, self._inst, name, ctypes.c_size_t(len(name)),
                           ctypes.byref(item)) or item.kind != kind:  # type: ignore[comparison-overlap]  # a c_uint8 field reads as int
            return None
        return item


FUNC = _ffi.WASMTIME_EXTERN_FUNC.value
MEMORY = _ffi.WASMTIME_EXTERN_MEMORY.value
GLOBAL = _ffi.WASMTIME_EXTERN_GLOBAL.value
#: value type -> (wasmtime_val_t kind, field of its union)
_VAL_KINDS = {"i32": (0, "i32"), "i64": (1, "i64"), "f32": (2, "f32"), "f64": (3, "f64")}


def global_value(ctx: ctypes.c_void_p, item: ffi.wasmtime_extern_t, ty: str) -> int | float:
    """The value of a numeric global (a raw extern from `Exports.get`) of type `ty`."""
    val = ffi.wasmtime_val_t()
    _global_get(ctx, ctypes.byref(item.of.global_), ctypes.byref(val))
    return getattr(val.of, _VAL_KINDS[ty][1])  # type: ignore[no-any-return]


def global_setter(ty: str, value: int | float) -> ffi.wasmtime_val_t:
    """A ready value for `set_global`: made once, set into any number of instances."""
    kind, fld = _VAL_KINDS[ty]
    val = ffi.wasmtime_val_t()
    val.kind = kind  # type: ignore[assignment]  # a c_uint8 field takes an int
    setattr(val.of, fld, value)
    return val


def set_global(ctx: ctypes.c_void_p, item: ffi.wasmtime_extern_t, val: ffi.wasmtime_val_t) -> None:
    err = _global_set(ctx, ctypes.byref(item.of.global_), ctypes.byref(val))
    if err:
        raise wasmtime.WasmtimeError._from_ptr(ctypes.cast(err, ErrPtr))


def enable_pooling(cfg: wasmtime.Config, slots: int, memory: int, *, tables: int = 4,
                   table_elements: int = 100_000, warm: int = 100) -> None:
    """Switch `cfg` to wasmtime's pooling instance allocator (wasmtime-py has no Python API
    for it): `slots` instances, memories and tables reserved up front, each memory at most
    `memory` bytes, up to `tables` tables of `table_elements` per instance, `warm` freed slots
    kept ready for the next instance of the same module."""
    pc = ffi.wasmtime_pooling_allocation_config_new()
    try:
        ffi.wasmtime_pooling_allocation_config_total_core_instances_set(pc, slots)
        ffi.wasmtime_pooling_allocation_config_total_memories_set(pc, slots)
        ffi.wasmtime_pooling_allocation_config_total_tables_set(pc, slots * tables)
        ffi.wasmtime_pooling_allocation_config_total_stacks_set(pc, slots)
        ffi.wasmtime_pooling_allocation_config_total_component_instances_set(pc, slots)
        ffi.wasmtime_pooling_allocation_config_max_memory_size_set(pc, memory)
        ffi.wasmtime_pooling_allocation_config_max_tables_per_module_set(pc, tables)
        ffi.wasmtime_pooling_allocation_config_table_elements_set(pc, table_elements)
        ffi.wasmtime_pooling_allocation_config_max_unused_warm_slots_set(pc, min(warm, slots))
        ffi.wasmtime_pooling_allocation_strategy_set(cfg.ptr(), pc)
    finally:
        ffi.wasmtime_pooling_allocation_config_delete(pc)


def _no_ticker() -> None:
    """The arm of a store no runtime ticks (a test's own engine)."""


class StoreControl:
    """Per-call budgets on a store: epoch deadline and fuel, set through the raw C API."""

    __slots__ = ("_store", "_ctx", "_fuel_out", "_ticks", "_ticks_c", "_arm", "enter", "leave",
                 "native_hooks")

    def __init__(self, store: wasmtime.Store, ctx: ctypes.c_void_p | None = None,
                 ticker: EpochTicker | None = None):
        """`ctx`: the store's context when the caller has it (`StoreControl.ctx`);
        `ticker`: the runtime's (`Runtime.ticker`), told of every deadline armed here, and
        started by the first store (nothing before a store runs guest code)."""
        if ticker is not None:
            ticker.start()
        self._store = store
        self._ctx = ctx if ctx is not None else ctypes.cast(store._context(), ctypes.c_void_p)
        self._fuel_out = ctypes.c_uint64(0)
        self._ticks = -1
        self._ticks_c = ctypes.c_uint64(0)
        self._arm: Callable[[], None] = ticker.arm if ticker is not None else _no_ticker
        #: around every call into the guest (its start function too): while one runs, the
        #: ticker keeps its normal period, so the call's deadline comes on time
        #: (engine/ticker.py); a `try`/`finally` pairs them
        self.enter: Callable[[], None] = ticker.enter if ticker is not None else _no_ticker
        self.leave: Callable[[], None] = ticker.leave if ticker is not None else _no_ticker
        #: what the native batch call needs to do the same itself (`EpochTicker.native_hooks`)
        self.native_hooks = ticker.native_hooks if ticker is not None else None

    @property
    def ctx(self) -> ctypes.c_void_p:
        return self._ctx

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)`, a call into the guest (or an instantiation, which runs its start
        function), counted as running by the ticker from `enter` to `leave`."""
        self.enter()
        try:
            return fn(*args)
        finally:
            self.leave()

    def set_deadline(self, ticks: int) -> None:
        """Trap the next call once the epoch has advanced `ticks` past its value now.

        Every guest kind arms here, so this is where the ticker learns a call may be running:
        the flag is stored after the deadline (the ticker then reads an epoch no older than
        the deadline's base), and an idle ticker is woken to its normal period."""
        if ticks != self._ticks:
            self._ticks, self._ticks_c = ticks, ctypes.c_uint64(ticks)
        _set_epoch_deadline_fast(self._ctx, self._ticks_c)
        self._arm()

    def set_fuel(self, fuel: int) -> None:
        err = _set_fuel(self._ctx, ctypes.c_uint64(fuel))
        if err:
            raise wasmtime.WasmtimeError._from_ptr(ctypes.cast(err, ErrPtr))

    def get_fuel(self) -> int:
        err = _get_fuel(self._ctx, ctypes.byref(self._fuel_out))
        if err:
            raise wasmtime.WasmtimeError._from_ptr(ctypes.cast(err, ErrPtr))
        return self._fuel_out.value
