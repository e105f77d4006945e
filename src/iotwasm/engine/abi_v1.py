"""iotwasm ABI v1: batch-first calls into a reactor module (spec: docs/abi.md); the guest.

Per batch the host makes one copy in (framed records), one call (`iot_process`) and one copy
out (framed outputs). No Python runs per message inside the guest call, which is what makes a
sandboxed pipeline faster than the same logic as plain Python.

The guest keeps an 8-byte header (`used`, `inputs_done`) current while it works. That header
is how a trap in the middle of a batch loses nothing: outputs of finished inputs are kept, the
input being handled becomes a dead letter with the error, the instance is replaced by a fresh
one, and the rest of the batch goes on. The factory that links a module and makes guests is
abi_v1_factory.py.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Sequence, cast

import wasmtime

from ..errors import (AbiError, GuestError, InitError, IotwasmError, MemoryLimitExceeded,
                      OutputLimitExceeded)
from ..message import BatchResult, DeadLetter, Message
from .fastcall import FUNC, MEMORY, CallFailed, CallSlots, Exports, RawFunc, StoreControl, call_failure
from .guest_memory import GuestMemory
from .host import call_budget
from .limits import format_size
from .traps import classify
from .v1_native import BatchCall, batch_call
# the framing, re-exported: tools and tests import it from here
from .v1_framing import (IN_RECORD, KIND_ERROR, KIND_MESSAGE, OUT_HEADER,  # noqa: F401
                         OUT_RECORD, pack_inputs, pack_outputs, parse_outputs, unpack_inputs)

if TYPE_CHECKING:
    from .abi_v1_factory import V1Factory

ABI_VERSION = 1

IOT_OK = 0
IOT_OUTPUT_FULL = 1
ERROR_CODES: dict[int | None, str] = {-1: "IOT_ERR_FRAMING", -2: "IOT_ERR_INTERNAL"}

MIN_BUFFER = 64 * 1024
#: what one `iot_process` call left: (failure, status, fuel used, output header or the AbiError
#: reading it)
_CallResult = tuple[IotwasmError | None, int | None, int, tuple[int, int] | AbiError]
_ZERO_HEADER = bytes(OUT_HEADER.size)


class V1Guest:
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
            try:
                instance = f.pre.instantiate(store)
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
        self._arm()
        if self.f.budgeted:
            call_budget.at = self._deadline_at
        try:
            return fn(*args)
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
                                          self.f.limits.max_output)
            self._native.buffers(self.in_ptr, self.in_cap, self.out_ptr, self.out_cap)

    # -- the batch call ------------------------------------------------------------------
    def process(self, messages: Sequence[Message]) -> BatchResult:
        """Run a batch; every message ends up with its outputs or as a dead letter.

        The common case (a healthy instance, buffers already big enough, the guest finishes
        every input with no error record) is handled first in a straight line: at a batch of
        one, the bookkeeping of the general loop would cost more than the guest call. Any
        other outcome continues in the general loop from the call already made."""
        n = len(messages)
        if self.broken is None and n:
            if self._native is not None:
                return self._process_native(messages, self._native)
            data = pack_inputs(messages)
            size = len(data)
            if size <= self.in_cap and self.out_cap >= min(max(MIN_BUFFER, size * 2),
                                                           self.f.limits.max_output):
                call = self._call(data, n)
                failure, status, fuel, header = call
                if failure is None and status == IOT_OK and type(header) is tuple:
                    used, done = header
                    if done == n and used <= self.out_cap - OUT_HEADER.size:
                        try:
                            outs, errs = parse_outputs(
                                self.mem.read(self.out_ptr + OUT_HEADER.size, used), n, done, 0)
                        except AbiError:
                            pass  # the general loop reports it
                        else:
                            if not errs:
                                return BatchResult(outs, [], fuel)
                return self._process(messages, (n, call))
        return self._process(messages, None)

    def _process_native(self, messages: Sequence[Message], native: BatchCall) -> BatchResult:
        """The straight line of `process` in one native call (engine/v1_native.py); what it
        leaves (inputs that do not fit, any other outcome) goes on as in Python."""
        f = self.f
        metered = f.limits.fuel is not None
        if metered or f.epoch_cell.value != self._armed_epoch:
            self._arm()
        if f.budgeted:
            call_budget.at = self._deadline_at
        got = native.run(messages)
        if got is None:  # nothing was called
            return self._process(messages, None)
        if native.size != self.mem.size():
            self.mem.refresh()  # the call grew (and may have moved) memory
        if type(got) is list:
            return BatchResult(got, [], self._fuel_used() if metered else 0)
        status, err, trap = cast(tuple[int, int, int], got)
        failed = call_failure(err, trap) if err or trap else None
        return self._process(messages, (len(messages), self._outcome(
            None if failed else status, failed)))

    def _call(self, data: bytes, count: int) -> _CallResult:
        """Copy one chunk in and run `iot_process` on it (buffers must be big enough)."""
        mem = self.mem
        mem.write(self.in_ptr, data)
        mem.write(self.out_ptr, _ZERO_HEADER)
        f = self.f
        if f.limits.fuel is not None or f.epoch_cell.value != self._armed_epoch:
            self._arm()
        if f.budgeted:
            call_budget.at = self._deadline_at
        # what _invoke does, inline: this runs once per batch
        try:
            status = self._process_fn(self.in_ptr, len(data), count, self.out_ptr, self.out_cap)
        except CallFailed as e:
            return self._outcome(None, e)
        return self._outcome(status, None)

    def _outcome(self, status: int | None, failed: CallFailed | None) -> _CallResult:
        """What a call of `iot_process` left: (failure, status, fuel used, output header or
        the AbiError reading it)."""
        mem = self.mem
        f = self.f
        mem.refresh()  # the call may have grown (and moved) memory
        failure: IotwasmError | None = None
        if failed is not None:
            failure = classify(failed.cause, module=f.name, function="iot_process",
                               limits=f.limits, memory_bytes=mem.size())
        fuel = self._fuel_used() if f.limits.fuel is not None else 0
        header: tuple[int, int] | AbiError
        try:
            header = mem.unpack_from(OUT_HEADER, self.out_ptr)
        except AbiError as e:
            header = e
        return failure, status, fuel, header

    def _process(self, messages: Sequence[Message],
                 first: tuple[int, _CallResult] | None) -> BatchResult:
        """The general loop. `first`: (end, result of `_call`) of a call already made on
        messages[0:end] by the fast path."""
        result = BatchResult()
        dead = result.dead_letters
        name = self.f.name
        n = len(messages)
        start = 0
        one_by_one = False
        while start < n:
            if first is not None:
                end, call = first
                first = None
                chunk = messages[start:end]
            else:
                if self.broken is not None:
                    dead.extend(DeadLetter(i, messages[i], self.broken) for i in range(start, n))
                    break
                end = start + 1 if one_by_one else n
                chunk = messages[start:end]
                data = pack_inputs(chunk)
                try:
                    self._grow("in", len(data))
                    self._grow("out", min(max(MIN_BUFFER, len(data) * 2), self.f.limits.max_output))
                except MemoryLimitExceeded as e:
                    if len(chunk) == 1:
                        dead.append(DeadLetter(start, chunk[0], e))
                        start += 1
                    else:
                        one_by_one = True
                    continue
                except IotwasmError as e:  # the allocator itself trapped or misbehaved
                    dead.append(DeadLetter(start, chunk[0], e))
                    start += 1
                    self._recycle_or_break()
                    continue
                call = self._call(data, len(chunk))
            failure, status, fuel, header = call
            result.fuel_used += fuel
            try:
                if isinstance(header, AbiError):
                    raise header
                used, done = header
                if used > self.out_cap - OUT_HEADER.size or done > len(chunk):
                    raise AbiError(f"output header claims used={used}, inputs_done={done} "
                                   f"(buffer {self.out_cap}, batch {len(chunk)})")
                outs, errs = parse_outputs(self.mem.read(self.out_ptr + OUT_HEADER.size, used),
                                           len(chunk), done, start)
            except AbiError as e:
                # The header cannot be trusted, so nobody knows which input failed: redo the
                # rest one message at a time on a fresh instance.
                err = failure or AbiError(str(e), module=name, function="iot_process")
                self._recycle_or_break()
                if len(chunk) == 1:
                    dead.append(DeadLetter(start, chunk[0], err))
                    start += 1
                else:
                    one_by_one = True
                continue
            result.outputs.extend(outs)
            dead.extend(DeadLetter(i, messages[i], GuestError(text, module=name, function="iot_process"))
                        for i, text in errs)
            if failure is None:
                if status == IOT_OK and done == len(chunk):
                    start = end
                    continue
                if status == IOT_OUTPUT_FULL:
                    if done:
                        start += done
                    elif self.out_cap >= self.f.limits.max_output:
                        dead.append(DeadLetter(start, chunk[0], OutputLimitExceeded(
                            f"outputs of one message exceed max_output "
                            f"{format_size(self.f.limits.max_output)}", module=name,
                            function="iot_process")))
                        start += 1
                    else:
                        try:
                            self._grow("out", min(self.out_cap * 4, self.f.limits.max_output))
                        except MemoryLimitExceeded as e:
                            dead.append(DeadLetter(start, chunk[0], OutputLimitExceeded(
                                str(e).split(": ", 2)[-1], module=name, function="iot_process")))
                            start += 1
                    continue
                if status == IOT_OK:
                    failure = AbiError(f"returned OK after {done} of {len(chunk)} inputs",
                                       module=name, function="iot_process")
                else:
                    code = ERROR_CODES.get(status, "unknown code")
                    failure = GuestError(f"returned error {status} ({code})", module=name,
                                         function="iot_process")
            if done >= len(chunk):  # failed after finishing everything: keep it all
                start = end
                self._recycle_or_break()
                continue
            # failure at input `done`: keep what came before, dead-letter it, go on after it
            dead.append(DeadLetter(start + done, chunk[done], failure))
            start += done + 1
            self._recycle_or_break()
        return result

    def _recycle_or_break(self) -> None:
        try:
            self.recycle()
        except IotwasmError as e:
            self.broken = e
