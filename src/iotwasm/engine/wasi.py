"""WASI command ABI: any WASI preview-1 program, one message per run.

The payload is the program's stdin, each stdout line is an output, stderr lines are the
container's logs. A fresh instance per message is slower than the batch ABI, but needs no
SDK and works from any language. argv, environment and directories are exactly what the
capabilities grant: by default the program sees none of them.
"""

from __future__ import annotations

import errno
import os
import tempfile
from typing import TYPE_CHECKING, Sequence, cast

import wasmtime

from ..errors import AbiError, GuestError, InitError, IotwasmError, OutputLimitExceeded
from ..message import BatchResult, DeadLetter, Message, Output
from .fastcall import CallFailed, RawFunc, StoreControl
from .host import WASI_MODULES, HostContext
from .limits import Limits, format_size
from .traps import classify

if TYPE_CHECKING:
    from .runtime import CompiledModule

MAX_STDERR = 64 * 1024


class WasiFactory:
    def __init__(self, compiled: CompiledModule, limits: Limits, host: HostContext):
        self.name = compiled.name
        self.limits = limits
        self.host = host
        self.engine = compiled.engine
        module = cast(wasmtime.Module, compiled.module)  # prepare() sends only core modules here
        if compiled.info.export("_start") is None:
            raise AbiError("missing export '_start' required by wasi-command", module=self.name)
        for imp in module.imports:
            if imp.module not in WASI_MODULES:
                raise AbiError(f"a WASI command may only import WASI; it imports "
                               f"{imp.module}.{imp.name}", module=self.name)
        for d in host.capabilities.dirs:
            if not os.path.isdir(d.host_path):
                raise InitError(f"granted directory {d.host_path} does not exist", module=self.name)
        linker = wasmtime.Linker(self.engine)
        linker.define_wasi()
        try:
            self.pre = linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as e:
            raise AbiError(f"cannot link: {str(e).splitlines()[0]}", module=self.name) from None
        self.ticks = compiled.runtime.timeout_ticks(limits.timeout_ms)
        self.ticker = compiled.runtime.ticker

    def new_guest(self) -> "WasiGuest":
        return WasiGuest(self)


class WasiGuest:
    abi = "wasi-command"

    def __init__(self, factory: WasiFactory):
        self.f = factory
        self.recycled = 0
        self.broken: IotwasmError | None = None
        fd, self._stdin_path = tempfile.mkstemp(prefix="iotwasm-stdin-")
        os.close(fd)
        self._last_pages = 0

    def memory_pages(self) -> int:
        return self._last_pages

    def close(self) -> None:
        try:
            os.unlink(self._stdin_path)
        except OSError:
            pass

    def __del__(self) -> None:
        self.close()

    def process(self, messages: Sequence[Message]) -> BatchResult:
        result = BatchResult()
        for i, msg in enumerate(messages):
            try:
                outs, used = self._run(msg, i)
                result.outputs.extend(outs)
                result.fuel_used += used
            except IotwasmError as e:
                result.dead_letters.append(DeadLetter(i, msg, e))
        return result

    def _run(self, msg: Message, index: int) -> tuple[list[Output], int]:
        f = self.f
        caps = f.host.capabilities
        with open(self._stdin_path, "wb") as fh:
            fh.write(msg.payload)
        stdout = bytearray()
        stderr = bytearray()
        flooded = []

        def on_stdout(chunk: bytes) -> int:
            if len(stdout) + len(chunk) > f.limits.max_output:
                flooded.append(True)
                return -errno.EFBIG
            stdout.extend(chunk)
            return len(chunk)

        def on_stderr(chunk: bytes) -> int:
            if len(stderr) < MAX_STDERR:
                stderr.extend(chunk[: MAX_STDERR - len(stderr)])
            return len(chunk)

        wasi = wasmtime.WasiConfig()
        wasi.argv = [f.name, *caps.args]
        wasi.env = list(caps.env.items())
        wasi.stdin_file = self._stdin_path
        wasi.stdout_custom = on_stdout
        wasi.stderr_custom = on_stderr
        for d in caps.dirs:
            wasi.preopen_dir(d.host_path, d.guest_path, d.writable)
        store = wasmtime.Store(f.engine)
        store.set_limits(memory_size=f.limits.memory, table_elements=100_000, instances=1,
                         tables=4, memories=1)
        store.set_wasi(wasi)
        ctl = StoreControl(store, ticker=f.ticker)
        ctl.set_deadline(f.ticks)
        if f.limits.fuel is not None:
            ctl.set_fuel(f.limits.fuel)
        exit_code = 0
        failure: IotwasmError | None = None
        memory = None
        try:   # instantiation runs the start function: a call too
            instance = ctl.call(f.pre.instantiate, store)
            exports = instance.exports(store)
            memory = exports["memory"] if "memory" in [e.name for e in f.pre.module.exports] else None
            # RawFunc checks the export is a func of this signature (verify)
            ctl.call(RawFunc(store, exports["_start"], "_start", 0, ()))  # type: ignore[arg-type]
        except CallFailed as e:
            if isinstance(e.cause, wasmtime.ExitTrap):
                exit_code = e.cause.code
            else:
                size = memory.data_len(store) if isinstance(memory, wasmtime.Memory) else None
                failure = classify(e.cause, module=f.name, function="_start", limits=f.limits,
                                   memory_bytes=size)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            failure = classify(e, module=f.name, function="instantiate", limits=f.limits)
        if isinstance(memory, wasmtime.Memory):
            self._last_pages = memory.size(store)
        used = 0
        if f.limits.fuel is not None:
            used = f.limits.fuel - ctl.get_fuel()
        for line in bytes(stderr).decode("utf-8", "replace").splitlines():
            if line.strip():
                f.host.on_log(f.name, 2, line)
        if flooded:
            raise OutputLimitExceeded(f"stdout exceeded max_output {format_size(f.limits.max_output)}",
                                      module=f.name, function="_start")
        if failure is not None:
            raise failure
        if exit_code != 0:
            tail = bytes(stderr).decode("utf-8", "replace").strip().splitlines()
            why = f": {tail[-1]}" if tail else ""
            raise GuestError(f"exited with code {exit_code}{why}", module=f.name, function="_start")
        outputs = [Output(index, None, line) for line in bytes(stdout).split(b"\n") if line]
        return outputs, used
