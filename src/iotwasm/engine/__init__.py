"""Engine layer: wasmtime configuration, modules, limits, host functions and guest ABIs.

Public surface:
- `Runtime` loads modules (`Runtime.load`) into `CompiledModule`s and owns engines, the epoch
  ticker and the compile cache.
- `prepare(compiled, limits, host)` links a module for one container and returns a factory
  whose `new_guest()` makes instances; every guest has `process(messages) -> BatchResult`.
- `Limits`, `Capabilities`, `HostContext`, `ModuleInfo`, `inspect`.
"""

from __future__ import annotations

from ..errors import AbiError, ConfigError, InvalidModule
from .abi_v1 import V1Guest
from .abi_v1_factory import V1Factory
from .capabilities import HOST_CAPABILITIES, Capabilities, Preopen
from .component import ComponentFactory, ComponentGuest
from .host import HostContext, KeyValue, MemoryKeyValue
from .limits import (Limits, format_duration_ms, format_size, parse_count, parse_duration_ms,
                     parse_size, parse_timeout_ms)
from .module import ABI_COMPONENT, ABI_NONE, ABI_V1, ABI_WASI, ModuleInfo, ModuleSource
from .runtime import CompiledModule, EngineSettings, Runtime
from .wasi import WasiFactory, WasiGuest

Guest = V1Guest | WasiGuest | ComponentGuest
GuestFactory = V1Factory | WasiFactory | ComponentFactory


def prepare(compiled: CompiledModule, limits: Limits, host: HostContext) -> GuestFactory:
    """Link `compiled` for one container. Raises typed errors for ABI or capability problems,
    and ConfigError for a timeout above the runtime's maximum.

    Every factory gets `limits` bounded by the runtime (`Runtime.bounded`): its calls always
    have a time limit."""
    try:
        limits = compiled.runtime.bounded(limits)
    except ConfigError as e:
        raise ConfigError(str(e), module=compiled.name) from None
    abi = compiled.info.abi
    if abi == ABI_V1:
        return V1Factory(compiled, limits, host)
    if abi == ABI_WASI:
        return WasiFactory(compiled, limits, host)
    if abi == ABI_COMPONENT:
        return ComponentFactory(compiled, limits, host)
    raise AbiError("exports neither iot_process (iotwasm-v1) nor _start (wasi-command)",
                   module=compiled.name)


def inspect(runtime: Runtime, source: ModuleSource, name: str | None = None) -> ModuleInfo:
    """Describe a module (ABI, digest, imports, exports, memory) without running it."""
    return runtime.load(source, name=name).info


__all__ = [
    "ABI_COMPONENT", "ABI_NONE", "ABI_V1", "ABI_WASI", "Capabilities", "CompiledModule",
    "EngineSettings", "Guest", "GuestFactory", "HOST_CAPABILITIES", "HostContext",
    "InvalidModule", "KeyValue", "Limits", "MemoryKeyValue", "ModuleInfo", "Preopen", "Runtime",
    "format_duration_ms", "format_size", "inspect", "parse_count", "parse_duration_ms",
    "parse_size", "parse_timeout_ms", "prepare",
]
