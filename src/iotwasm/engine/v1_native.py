"""The native batch call of iotwasm-v1 guests (native/v1_batch.c): loading it, choosing it.

At a batch of one, the Python around a guest call costs more than the call: framing through
`struct`, two memory writes, a ctypes call with five arguments, the header read, a copy of the
outputs and their parse. The extension does the common case of all of that in one call (see
the C file for what it does and what it leaves to Python). It is built by scripts/setup.sh
for the interpreter of the project's venv; without it, or with `Runtime(batch_calls=
"python")`, every call takes the Python path, which stays the reference: the same tests run
against both.
"""

from __future__ import annotations

import ctypes
import functools
import sysconfig
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, Sequence

from wasmtime import _ffi

from ..extensions import choose_native, load_extension
from ..message import Message, Output
from .fastcall import RawFunc, StoreControl
from .guest_memory import GuestMemory

#: the extension's interface this code speaks (its `INTERFACE`): a build from an older source
#: is not used
INTERFACE = 2
EXTENSION = Path(__file__).parent / "native" / f"iotwasm_v1_batch{sysconfig.get_config_var('EXT_SUFFIX')}"


class BatchCall(Protocol):
    """What the extension's BatchCall offers (engine/native/v1_batch.c)."""

    #: the guest memory's size after the last call
    size: int

    def run(self, messages: Sequence[Message]) -> list[Output] | tuple[int, int, int] | None:
        """Outputs (the common case); None when nothing was called; (status, error address,
        trap address) of a call whose outcome the caller reads itself."""

    def buffers(self, in_ptr: int, in_cap: int, out_ptr: int, out_cap: int) -> None: ...


@functools.cache
def _extension() -> ModuleType | None:
    """The extension, loaded and bound once per process; None when it is not built or will
    not load (built for another interpreter, or from an older source)."""
    mod = load_extension(EXTENSION, "iotwasm_v1_batch", INTERFACE)
    if mod is None:
        return None
    try:
        mod.bind(*(_address(f) for f in ("wasmtime_func_call_unchecked", "wasmtime_memory_data",
                                         "wasmtime_memory_data_size")))
    except (OSError, AttributeError):
        return None
    return mod


def _address(symbol: str) -> int:
    return ctypes.cast(getattr(_ffi.dll, symbol), ctypes.c_void_p).value or 0


def use_native(kind: str) -> bool:
    """Whether guests of a runtime asking for `kind` make their batch calls natively."""
    return choose_native(kind, "batch calls", EXTENSION, _extension)


def batch_call(process: RawFunc, mem: GuestMemory, min_buffer: int, max_output: int,
               ctl: StoreControl) -> BatchCall:
    """A native caller of `process` (iot_process) on `mem`'s instance. It holds both handles,
    and so the store, for as long as it lives. With the native ticker (`ctl.native_hooks`)
    each call brackets itself as running, as `StoreControl.enter`/`leave` do; without it the
    caller brackets `run` itself. `ctl` is held too: it keeps the ticker's state alive."""
    mod = _extension()
    assert mod is not None, "use_native() said yes"
    ctx, func, vals = process.addresses()
    _, memory = mem.addresses()
    # keep, output and message types, store context, function, memory, value array, sizing
    call: Any = mod.BatchCall((process, mem, ctl), Output, Message, ctx, func, memory, vals,
                              min_buffer, max_output, *(ctl.native_hooks or ()))
    return call  # type: ignore[no-any-return]
