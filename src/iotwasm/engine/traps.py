"""Turn what wasmtime reports (traps, errors) into iotwasm's typed errors.

One line each, naming the module, the function and the limit that was hit.
"""

from __future__ import annotations

import wasmtime
from wasmtime import TrapCode

from ..errors import (FuelExhausted, GuestTrap, IotwasmError, MemoryLimitExceeded,
                      StackLimitExceeded, TimeoutExceeded)
from .limits import Limits, format_size
from .fastcall import take_host_failure

PAGE = 65536

_TRAP_TEXT = {
    TrapCode.MEMORY_OUT_OF_BOUNDS: "out-of-bounds memory access",
    TrapCode.HEAP_MISALIGNED: "misaligned atomic access",
    TrapCode.TABLE_OUT_OF_BOUNDS: "out-of-bounds table access",
    TrapCode.INDIRECT_CALL_TO_NULL: "indirect call to null",
    TrapCode.BAD_SIGNATURE: "indirect call signature mismatch",
    TrapCode.INTEGER_OVERFLOW: "integer overflow",
    TrapCode.INTEGER_DIVISION_BY_ZERO: "integer division by zero",
    TrapCode.BAD_CONVERSION_TO_INTEGER: "invalid float to integer conversion",
    TrapCode.UNREACHABLE: "unreachable executed",
}


def classify(cause: Exception, *, module: str, function: str, limits: Limits,
             memory_bytes: int | None = None) -> IotwasmError:
    """Map a wasmtime Trap/WasmtimeError raised by a call into a typed iotwasm error."""
    host = take_host_failure()
    if isinstance(host, IotwasmError):
        host.module = host.module or module
        host.function = host.function or function
        if not str(host).startswith(module):
            return type(host)(str(host), module=module, function=function)
        return host
    code = cause.trap_code if isinstance(cause, wasmtime.Trap) else None
    if code is None and isinstance(cause, wasmtime.WasmtimeError):
        code = _code_from_text(str(cause))
    if code == TrapCode.OUT_OF_FUEL:
        return FuelExhausted(f"fuel limit {limits.fuel:,} exhausted", module=module, function=function)
    if code == TrapCode.INTERRUPT:
        return TimeoutExceeded(f"timeout {limits.timeout_ms:g}ms exceeded", module=module,
                               function=function)
    if code == TrapCode.STACK_OVERFLOW:
        return StackLimitExceeded(f"wasm stack limit {format_size(limits.stack)} exceeded",
                                  module=module, function=function)
    # A guest whose memory.grow was refused usually ends in `unreachable` (abort). When its
    # memory is within one page of the limit, that refusal is the real story.
    if memory_bytes is not None and memory_bytes + PAGE > limits.memory and code in (
            TrapCode.UNREACHABLE, None):
        return MemoryLimitExceeded(
            f"memory limit {format_size(limits.memory)} reached ({format_size(memory_bytes)} in use)",
            module=module, function=function)
    text = _TRAP_TEXT.get(code) if code is not None else None
    if text is None:
        text = _first_line(str(cause))
    return GuestTrap(f"trap: {text}", module=module, function=function)


def _code_from_text(text: str) -> TrapCode | None:
    t = text.lower()
    if "all fuel consumed" in t:
        return TrapCode.OUT_OF_FUEL
    if "interrupt" in t:
        return TrapCode.INTERRUPT
    if "call stack exhausted" in t:
        return TrapCode.STACK_OVERFLOW
    return None


def _first_line(text: str) -> str:
    """The most telling single line of a wasmtime error: its root cause when it has one."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if "Caused by:" in lines:
        causes = lines[lines.index("Caused by:") + 1:]
        if causes:
            last = causes[-1]
            return last.split(":", 1)[1].strip() if last[:1].isdigit() and ":" in last else last
    for ln in lines:
        if not ln.startswith("error while executing at wasm backtrace") and not ln[:1].isdigit():
            return ln
    return "unknown trap"
