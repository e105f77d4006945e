"""iotwasm ABI v1: the batch call of a guest, and what each outcome of it means (docs/abi.md).

One call of `iot_process` per chunk of a batch. The common case (a healthy instance, buffers
big enough, every input done without an error record) is one straight line, in native code
where the extension is built (engine/v1_native.py). Everything else is the general loop: a
trap in the middle of a batch keeps the outputs of the inputs before it, dead-letters the one
being handled, replaces the instance and goes on; a full output buffer resumes where the guest
stopped or grows; a header that cannot be trusted sends the rest through one message at a time.
`V1Guest` (abi_v1.py: the instance, its budgets and buffers) combines this with its instance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence, cast

from ..errors import AbiError, GuestError, IotwasmError, MemoryLimitExceeded, OutputLimitExceeded
from ..message import BatchResult, DeadLetter, Message
from .fastcall import CallFailed, RawFunc, StoreControl, call_failure
from .guest_memory import GuestMemory
from .host import call_budget
from .limits import format_size
from .traps import classify
from .v1_framing import OUT_HEADER, pack_inputs, parse_outputs
from .v1_native import BatchCall

if TYPE_CHECKING:
    from .abi_v1_factory import V1Factory

IOT_OK = 0
IOT_OUTPUT_FULL = 1
ERROR_CODES: dict[int | None, str] = {-1: "IOT_ERR_FRAMING", -2: "IOT_ERR_INTERNAL"}

MIN_BUFFER = 64 * 1024
#: what one `iot_process` call left: (failure, status, fuel used, output header or the AbiError
#: reading it)
_CallResult = tuple[IotwasmError | None, int | None, int, tuple[int, int] | AbiError]
_ZERO_HEADER = bytes(OUT_HEADER.size)


class V1Batches:
    """The batch call of `V1Guest` (a mixin: the instance and its buffers are the guest's)."""

    f: V1Factory
    mem: GuestMemory
    broken: IotwasmError | None
    in_ptr: int
    in_cap: int
    out_ptr: int
    out_cap: int
    _native: BatchCall | None
    _process_fn: RawFunc
    ctl: StoreControl
    _armed_epoch: int
    _deadline_at: float

    if TYPE_CHECKING:
        def _arm(self) -> None: ...

        def _fuel_used(self) -> int: ...

        def _grow(self, which: str, need: int) -> None: ...

        def recycle(self) -> None: ...

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

    def _budget_call(self) -> None:
        """Fresh budgets before any call into the guest: `_arm` when they may be spent (fuel
        always, the deadline once the epoch moved), and the deadline outbound requests may
        wait until (host.call_budget) for a module that makes them."""
        f = self.f
        if f.limits.fuel is not None or f.epoch_cell.value != self._armed_epoch:
            self._arm()
        if f.budgeted:
            call_budget.at = self._deadline_at

    def _process_native(self, messages: Sequence[Message], native: BatchCall) -> BatchResult:
        """The straight line of `process` in one native call (engine/v1_native.py); what it
        leaves (inputs that do not fit, any other outcome) goes on as in Python."""
        self._budget_call()
        # with the native ticker the call tells it itself; without, it is told from here
        got = native.run(messages) if self.ctl.native_hooks else self.ctl.call(native.run, messages)
        if got is None:  # nothing was called
            return self._process(messages, None)
        if native.size != self.mem.size():
            self.mem.refresh()  # the call grew (and may have moved) memory
        if type(got) is list:
            return BatchResult(got, [], self._fuel_used() if self.f.limits.fuel is not None else 0)
        status, err, trap = cast(tuple[int, int, int], got)
        failed = call_failure(err, trap) if err or trap else None
        return self._process(messages, (len(messages), self._outcome(
            None if failed else status, failed)))

    def _call(self, data: bytes, count: int) -> _CallResult:
        """Copy one chunk in and run `iot_process` on it (buffers must be big enough)."""
        mem = self.mem
        mem.write(self.in_ptr, data)
        mem.write(self.out_ptr, _ZERO_HEADER)
        self._budget_call()
        try:
            status = self.ctl.call(self._process_fn, self.in_ptr, len(data), count, self.out_ptr,
                                   self.out_cap)
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
                    start, one_by_one = _alone_or_one_by_one(dead, chunk, start, e, one_by_one)
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
                start, one_by_one = _alone_or_one_by_one(dead, chunk, start, err, one_by_one)
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


def _alone_or_one_by_one(dead: list[DeadLetter], chunk: Sequence[Message], start: int,
                         err: IotwasmError, one_by_one: bool) -> tuple[int, bool]:
    """A failure no message of a chunk can be told from: a chunk of one message becomes its
    dead letter (the loop goes on after it); a larger one is retried one message at a time.
    Returns the loop's next (start, one_by_one)."""
    if len(chunk) == 1:
        dead.append(DeadLetter(start, chunk[0], err))
        return start + 1, one_by_one
    return start, True
