"""iotwasm ABI v1: linking a module once per container, and making its guests.

The factory checks the module's exports and imports once (instances then bind exports without
checking again), links the host functions its capabilities grant, and keeps what its guests
share: the linked module, the time budget in epoch ticks, and the snapshot of a ready guest
(engine/snapshot.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import wasmtime

from ..errors import AbiError
from .abi_v1 import V1Guest
from .fastcall import signature
from .host import WASI_MODULES, HostContext, check_imports, define_host
from .limits import Limits
from .snapshot import Snapshots

if TYPE_CHECKING:
    from .runtime import CompiledModule

EXPORT_SIGNATURES = {
    "iot_abi_version": signature(0),
    "iot_alloc": signature(1),
    "iot_process": signature(5),
    "iot_free": signature(2, ()),
    "iot_init": signature(0),
    "_initialize": signature(0, ()),
}


class V1Factory:
    """Links a compiled module once per container; makes guests (instances) cheaply."""

    def __init__(self, compiled: CompiledModule, limits: Limits, host: HostContext):
        self.name = compiled.name
        self.limits = limits
        self.host = host
        self.engine = compiled.engine
        self.runtime = compiled.runtime
        module = cast(wasmtime.Module, compiled.module)  # prepare() sends only core modules here
        info = compiled.info
        missing = [p for p in info.problems if p.startswith("missing export")]
        if missing:
            raise AbiError(missing[0], module=self.name)
        # Signatures are checked once here, so instances can bind exports without re-checking.
        for fn, want in EXPORT_SIGNATURES.items():
            exp = info.export(fn)
            if exp is not None and (exp.kind != "func" or exp.type != want):
                raise AbiError(f"export {fn} has type {exp.type}, expected {want}", module=self.name)
        memory = info.export("memory")  # present: a missing export is among the problems above
        if memory is None or memory.kind != "memory":
            raise AbiError("export 'memory' is not a memory", module=self.name)
        self.optional = {fn for fn in ("iot_free", "_initialize", "iot_init") if info.export(fn)}
        check_imports(module, self.name, host.capabilities)
        linker = wasmtime.Linker(self.engine)
        define_host(linker, host)
        self.needs_wasi = any(i.module in WASI_MODULES for i in module.imports)
        if self.needs_wasi:
            linker.define_wasi()
        try:
            self.pre = linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as e:
            raise AbiError(f"cannot link: {str(e).splitlines()[0]}", module=self.name) from None
        self.ticks = self.runtime.timeout_ticks(limits.timeout_ms)
        #: the runtime's epoch count (`Runtime.epoch`), read once per batch without a property
        self.epoch_cell = self.runtime.ticker.epoch_cell
        #: batch calls through the native extension (engine/v1_native.py)
        self.native_batch = self.runtime.native_batch
        #: a module that may wait on the network learns its calls' deadlines (host.call_budget)
        self.budgeted = any(i.module == "iot" and i.name == "http_request" for i in module.imports)
        self.budget_s = (limits.timeout_ms or self.runtime.max_timeout_ms) / 1000
        # WASI calls do not pass through the host functions that watch a start-up
        self.snapshots = Snapshots(compiled.snapshot, "imports WASI" if self.needs_wasi else None)

    def new_guest(self) -> V1Guest:
        return V1Guest(self)
