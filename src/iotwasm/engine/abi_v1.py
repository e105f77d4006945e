"""iotwasm ABI v1: batch-first calls into a reactor module (spec: docs/abi.md); the guest.

Per batch the host makes one copy in (framed records), one call (`iot_process`) and one copy
out (framed outputs). No Python runs per message inside the guest call, which is what makes a
sandboxed pipeline faster than the same logic as plain Python.

The guest keeps an 8-byte header (`used`, `inputs_done`) current while it works. That header
is how a trap in the middle of a batch loses nothing: outputs of finished inputs are kept, the
input being handled becomes a dead letter with the error, the instance is replaced by a fresh
one, and the rest of the batch goes on (the batch call and its outcomes: abi_v1_batch.py;
this file is the instance, its budgets and buffers). The factory that links a module and
makes guests is abi_v1_factory.py.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, cast

import wasmtime

from ..errors import AbiError, InitError, IotwasmError, MemoryLimitExceeded
from .abi_v1_batch import ERROR_CODES, IOT_OK, IOT_OUTPUT_FULL, MIN_BUFFER, V1Batches  # noqa: F401
from .fastcall import FUNC, MEMORY, CallFailed, CallSlots, Exports, RawFunc, StoreControl
from .guest_memory import GuestMemory
from .limits import format_size
from .traps import classify
from .v1_native import BatchCall, batch_call
# the framing, re-exported: tools and tests import it from here
from .v1_framing import (IN_RECORD, KIND_ERROR, KIND_MESSAGE, OUT_HEADER,  # noqa: F401
                         OUT_RECORD, pack_inputs, pack_outputs, parse_outputs, unpack_inputs)

if TYPE_CHECKING:
    from .abi_v1_factory import V1Factory

ABI_VERSION = 1


class V1Guest(V1Batches):
    """One live instance of an iotwasm-v1 module. Not thread-safe: the pool serialises use."""

    abi = "iotwasm-v1"
    #: None only once closed, or while a failed (re)start left no instance
    mem: GuestMemory
    _free: RawFunc | None

    def __init__(self, factory: V1Factory):
        self.f = factory
        self.recycled = 0
        self.broken: IotwasmError | None = None
        self._start()

    # -- instance lifecycle --------------------------------------------------------------
    def _start(self) -> None:
        f = self.f
        store = wasmtime.Store(f.engine)
        store.set_limits(memory_size=f.limits.memory, table_elements=100_000, instances=1,
                         tables=4, memories=1)
        if f.needs_wasi:
            store.set_wasi(wasmtime.WasiConfig())  # no args, env, dirs or stdio
        if getattr(self, "mem", None) is not None:
            self.mem.release()  # the old store's memory goes away with it
        self.store = store
        self.ctl = StoreControl(store, ticker=f.runtime.ticker)
        self._armed_epoch = -1
        self.mem = None  # type: ignore[assignment]
        self._arm()
        rec = f.snapshots.record()
        exports = None
        try:
            try:   # the start function, if any, is a call too
                instance = self.ctl.call(f.pre.instantiate, store)
            except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
                err = classify(e, module=f.name, function="instantiate", limits=f.limits)
                raise InitError(str(err), module=None) from None
            ctx = self.ctl.ctx  # one context pointer for every handle of this store
            exports = Exports(store, instance, ctx)
            # the factory checked every export's presence and type: get() finds them all
            self.mem = GuestMemory(store, exports.get(b"memory", MEMORY), ctx)  # type: ignore[arg-type]
            slots = CallSlots(5)

            def bind(n: str, params: int, results: tuple[str, ...] = ("i32",)) -> RawFunc:
                return RawFunc(store, exports.get(n.encode(), FUNC), n, params, results, verify=False,  # type: ignore[arg-type,union-attr]
                               ctx=ctx, slots=slots)

            self._alloc = bind("iot_alloc", 1)
            self._process_fn = bind("iot_process", 5)
            # the native batch call, made with the first buffers (`_grow`): until then every
            # batch takes the Python path, and a guest that never runs one costs nothing more
            self._native: BatchCall | None = None
            self._free = None  # bound when a buffer is first replaced (_grow): few guests ever do
            self._bind = bind
            snap = f.snapshots.snapshot
            if snap is not None:
                snap.restore(exports, self.mem)  # what version check and init left, copied
                for level, line in snap.logs:    # and what init logged, logged again
                    f.host.on_log(f.host.container, level, line)
            else:
                if rec is not None and f.snapshots.plan is not None:
                    rec.instantiated(f.snapshots.plan, exports, self.mem)
                self._initialise(bind)
        except BaseException:
            exports = None
            raise
        finally:
            if rec is not None:
                f.snapshots.finish(rec, exports, self.mem)
        self.in_ptr = self.in_cap = self.out_ptr = self.out_cap = 0

    def _initialise(self, bind: Callable[..., RawFunc]) -> None:
        """Check the ABI version, then run the module's init hooks."""
        f = self.f
        version = self._call_init(bind("iot_abi_version", 0))  # before guest code with side effects
        if version != ABI_VERSION:
            raise AbiError(f"speaks iotwasm ABI v{version}; this host supports v{ABI_VERSION}",
                           module=f.name)
        for n, r in (("_initialize", ()), ("iot_init", ("i32",))):
            if n in f.optional:
                rc = self._call_init(hook := bind(n, 0, r))
                if rc:
                    raise InitError(f"{n} returned {rc}", module=f.name, function=hook.name)

    def _invoke(self, fn: RawFunc, *args: int) -> int | None:
        """Call into the guest with fresh budgets; raise its failure as a typed error."""
        self._budget_call()
        try:
            return self.ctl.call(fn, *args)
        except CallFailed as e:
            self.mem.refresh()
            raise classify(e.cause, module=self.f.name, function=fn.name, limits=self.f.limits,
                           memory_bytes=self.mem.size()) from None
        finally:
            self.mem.refresh()  # the call may have grown (and moved) memory

    def _call_init(self, fn: RawFunc) -> int | None:
        try:
            return self._invoke(fn)
        except IotwasmError as e:
            raise InitError(str(e).split(": ", 1)[-1], module=self.f.name, function=fn.name) from None

    def _arm(self) -> None:
        """Fresh budgets for the next call: an epoch deadline and, when metered, fuel.

        The deadline is relative to the engine's epoch when it is set; while the epoch has not
        moved since (calls closer together than one tick) it still stands, so it is not reset.
        """
        epoch = self.f.epoch_cell.value
        if epoch != self._armed_epoch:
            self.ctl.set_deadline(self.f.ticks)
            self._armed_epoch = epoch
            if self.f.budgeted:
                self._deadline_at = time.monotonic() + self.f.budget_s
        if self.f.limits.fuel is not None:
            self.ctl.set_fuel(self.f.limits.fuel)

    def _fuel_used(self) -> int:
        if self.f.limits.fuel is None:
            return 0
        return self.f.limits.fuel - self.ctl.get_fuel()

    def recycle(self) -> None:
        """Replace the instance with a fresh one (after a trap its state is not trustworthy)."""
        self.recycled += 1
        self._start()

    def memory_pages(self) -> int:
        return self.mem.size() // 65536 if self.mem else 0

    def close(self) -> None:
        if self.mem is not None:
            self.mem.release()
        self.mem = None  # type: ignore[assignment]
        self.store = None  # type: ignore[assignment]
        self._native = None  # it holds the store too: a closed guest runs nothing more

    # -- buffers -------------------------------------------------------------------------
    def _grow(self, which: str, need: int) -> None:
        ptr, cap = (self.in_ptr, self.in_cap) if which == "in" else (self.out_ptr, self.out_cap)
        if need <= cap:
            return
        new_cap = max(need, cap * 2, MIN_BUFFER)
        for size in dict.fromkeys((new_cap, need)):
            new_ptr = cast(int, self._invoke(self._alloc, size)) & 0xFFFFFFFF  # iot_alloc returns i32
            if new_ptr:
                if new_ptr + size > self.mem.size():
                    raise AbiError(f"iot_alloc({size}) returned {new_ptr}, outside memory",
                                   module=self.f.name, function="iot_alloc")
                break
        else:
            raise MemoryLimitExceeded(
                f"no room for a {format_size(need)} {which}put buffer within memory limit "
                f"{format_size(self.f.limits.memory)}", module=self.f.name, function="iot_alloc")
        if ptr and "iot_free" in self.f.optional:
            if self._free is None:
                self._free = self._bind("iot_free", 2, ())
            try:
                self._invoke(self._free, ptr, cap)
            except IotwasmError:
                pass  # a guest that cannot free its buffer only wastes its own memory
        if which == "in":
            self.in_ptr, self.in_cap = new_ptr, size
        else:
            self.out_ptr, self.out_cap = new_ptr, size
        if self.f.native_batch:
            if self._native is None:
                self._native = batch_call(self._process_fn, self.mem, MIN_BUFFER,
                                          self.f.limits.max_output, self.ctl)
            self._native.buffers(self.in_ptr, self.in_cap, self.out_ptr, self.out_cap)
