"""The runtime owns wasmtime: engine configuration, the epoch ticker and the compile cache.

Engines are shared by every container whose limits need the same code generation (fuel
metering on or off, wasm stack size). One daemon thread advances the epoch of every engine,
which is what turns a per-call wall-clock timeout into a trap inside the guest; it starts
with the first store and slows down while no call can be running (engine/ticker.py).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import wasmtime
import wasmtime.component as wc

from ..errors import ConfigError, InvalidModule
from .cache import CompileCache
from .fastcall import WASMTIME_VERSION, enable_pooling
from .limits import Limits, format_duration_ms, format_size
from .module import (COMPONENT_VERSION, ModuleInfo, ModuleSource, check_header, describe,
                     info_from_record, info_to_record, read_source)
from .v1_native import use_native
from .ticker import DEFAULT_IDLE_TICK_MS, IDLE_AFTER_TICKS, EpochTicker, make_ticker
from .wasm_scan import SnapshotPlan, Unplannable, plan

#: a small reservation keeps thousands of instances within the address space; memory can
#: still grow beyond it (wasmtime then moves it), bounds checks become explicit.
DEFAULT_MEMORY_RESERVATION = 64 * 1024 * 1024
DEFAULT_MEMORY_GUARD = 64 * 1024
#: the longest any one call may run unless the runtime is told otherwise: ten times the
#: default per-call limit, and short enough that a spinning module holds up its own route's
#: lane (never the node) for seconds, not minutes
DEFAULT_MAX_TIMEOUT_MS = 10_000.0


@functools.lru_cache(maxsize=64)
def _fingerprint(settings: EngineSettings) -> str:
    """Once per setting and process (a cache hit asks for it on every load)."""
    text = f"wasmtime={WASMTIME_VERSION};{settings!r}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class EngineSettings:
    fuel: bool = False
    stack: int = 512 * 1024
    opt_level: str = "speed"
    memory_reservation: int = DEFAULT_MEMORY_RESERVATION
    memory_guard: int = DEFAULT_MEMORY_GUARD
    #: instances of wasmtime's pooling allocator (0: allocate on demand, the default)
    pool_slots: int = 0

    @staticmethod
    def shape(limits: Limits) -> tuple[bool, int]:
        """What of `limits` decides the engine: fuel metered or not, and the stack size."""
        return limits.fuel is not None, limits.stack

    @classmethod
    def for_limits(cls, limits: Limits, base: "EngineSettings") -> "EngineSettings":
        fuel, stack = cls.shape(limits)
        return cls(fuel=fuel, stack=stack, opt_level=base.opt_level,
                   memory_reservation=base.memory_reservation, memory_guard=base.memory_guard,
                   pool_slots=base.pool_slots)

    def fingerprint(self) -> str:
        """Changes whenever compiled code from another setting would not be valid here."""
        return _fingerprint(self)

    def make_engine(self) -> wasmtime.Engine:
        cfg = wasmtime.Config()
        cfg.epoch_interruption = True
        cfg.consume_fuel = self.fuel
        cfg.max_wasm_stack = self.stack
        cfg.cranelift_opt_level = self.opt_level
        cfg.memory_reservation = self.memory_reservation
        cfg.memory_guard_size = self.memory_guard
        cfg.memory_reservation_for_growth = 0
        cfg.parallel_compilation = False
        if self.pool_slots:
            # each slot's memory is its reservation: limits above it are refused (`bounded`)
            enable_pooling(cfg, self.pool_slots, self.memory_reservation)
        return wasmtime.Engine(cfg)


@dataclass(frozen=True)
class CompiledModule:
    """A validated module compiled for one engine setting; shareable across threads."""

    info: ModuleInfo
    wasm: bytes
    module: wasmtime.Module | wc.Component
    engine: wasmtime.Engine
    settings: EngineSettings
    runtime: "Runtime"
    #: how a ready instance can be snapshotted (engine/snapshot.py); None: it cannot
    snapshot: SnapshotPlan | None = None

    @property
    def name(self) -> str:
        return self.info.name


class Runtime:
    """Entry point of the engine layer: load modules, hand out engines, tick epochs."""

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None, *, epoch_tick_ms: float = 1.0,
                 opt_level: str = "speed", memory_reservation: int = DEFAULT_MEMORY_RESERVATION,
                 max_timeout_ms: float = DEFAULT_MAX_TIMEOUT_MS, pool_slots: int = 0,
                 idle_tick_ms: float = DEFAULT_IDLE_TICK_MS,
                 idle_clock: Callable[[], float] = time.monotonic, ticker: str = "auto",
                 batch_calls: str = "auto"):
        """`max_timeout_ms` bounds every call: limits without a timeout get it, limits asking
        for more are refused (`bounded`).

        The epoch advances every `epoch_tick_ms` while a call runs or one started within the
        last two ticks, and only every `idle_tick_ms` otherwise; a call's start brings the
        normal period back at once (engine/ticker.py). `idle_clock` (monotonic seconds)
        measures that idle window; tests pass a `ManualClock`. `ticker`: "native"
        (a thread in C that never takes the GIL), "thread" (a Python thread), or "auto" (the
        native one when its library is built). `batch_calls`: "native" (an iotwasm-v1 guest
        frames, calls and reads the common case of a batch in one call into the extension
        engine/v1_native.py loads), "python", or "auto" (native when built).

        `pool_slots` > 0 switches each engine to wasmtime's pooling allocator with that many
        instances (memories, tables) reserved up front: an instance starts in about half the
        time, because it reuses a slot instead of mapping fresh memory. The price is why it is
        not the default: at most `pool_slots` live instances per engine (the next one fails
        to start), every memory capped at `memory_reservation` (limits asking for more are
        refused), and the address space of all slots reserved when the engine is made."""
        if pool_slots < 0:
            raise ConfigError(f"pool size {pool_slots!r} must be 0 (no pool) or more")
        if not max_timeout_ms > 0:
            raise ConfigError(f"maximum timeout {max_timeout_ms!r} must be a positive number of ms")
        if not idle_tick_ms > 0:
            raise ConfigError(f"idle tick {idle_tick_ms!r} must be a positive number of ms")
        self.max_timeout_ms = float(max_timeout_ms)
        self.native_batch = use_native(batch_calls)
        self.epoch_tick_ms = epoch_tick_ms
        self.base = EngineSettings(opt_level=opt_level, memory_reservation=memory_reservation,
                                   pool_slots=pool_slots)
        self.cache = CompileCache(cache_dir) if cache_dir is not None else None
        self._engines: dict[EngineSettings, wasmtime.Engine] = {}
        #: the settings of each `EngineSettings.shape` of limits: one object each, made once,
        #: since every load and every container start looks them up
        self._settings: dict[tuple[bool, int], EngineSettings] = {}
        self._modules: dict[tuple[str, EngineSettings], wasmtime.Module | wc.Component] = {}
        #: descriptions by hex digest (they depend on the bytes only, not on engine settings)
        self._infos: dict[str, ModuleInfo] = {}
        #: snapshot plans by hex digest, None for a module that cannot be snapshotted
        self._plans: dict[str, SnapshotPlan | None] = {}
        self._lock = threading.Lock()
        #: advances the epochs; every arm of a deadline tells it, and the first store starts
        #: its thread (`StoreControl`)
        self.ticker: EpochTicker = make_ticker(
            ticker, period_s=epoch_tick_ms / 1000, idle_period_s=idle_tick_ms / 1000,
            idle_after_s=IDLE_AFTER_TICKS * epoch_tick_ms / 1000, clock=idle_clock)
        # an abandoned runtime's ticker stops when the runtime is collected (and at exit)
        weakref.finalize(self, self.ticker.stop)

    # -- engines -------------------------------------------------------------------------
    def engine(self, settings: EngineSettings) -> wasmtime.Engine:
        with self._lock:
            eng = self._engines.get(settings)
            if eng is None:
                eng = self._engines[settings] = settings.make_engine()
                self.ticker.add_engine(eng)
            return eng

    def settings_for(self, limits: Limits) -> EngineSettings:
        key = EngineSettings.shape(limits)
        settings = self._settings.get(key)
        if settings is None:
            settings = self._settings.setdefault(key, EngineSettings.for_limits(limits, self.base))
        return settings

    def bounded(self, limits: Limits) -> Limits:
        """`limits` with the time limit every call gets: the runtime's maximum when they name
        none. Raises ConfigError when they ask for more than the maximum."""
        if self.base.pool_slots and limits.memory > self.base.memory_reservation:
            raise ConfigError(f"memory limit {format_size(limits.memory)} is above the "
                              f"{format_size(self.base.memory_reservation)} of an instance "
                              "pool slot")
        t = limits.timeout_ms
        if t is None:
            return dataclasses.replace(limits, timeout_ms=self.max_timeout_ms)
        if t > self.max_timeout_ms:
            raise ConfigError(f"timeout {format_duration_ms(t)} is above the maximum of "
                              f"{format_duration_ms(self.max_timeout_ms)} per call")
        return limits

    def timeout_ticks(self, timeout_ms: float | None) -> int:
        """Epoch ticks for a wall-clock timeout (None: the maximum); +1 because the current
        tick is partly over."""
        if timeout_ms is None:
            timeout_ms = self.max_timeout_ms
        return max(1, int(timeout_ms / self.epoch_tick_ms + 0.999)) + 1

    @property
    def epoch(self) -> int:
        """Ticks so far, bumped after every engine's epoch: a guest whose deadline was set at
        the current value can skip resetting it (one FFI call per batch saved)."""
        return self.ticker.epoch_cell.value

    # -- modules -------------------------------------------------------------------------
    def load(self, source: ModuleSource, *, name: str | None = None,
             limits: Limits | None = None, digest: str | None = None) -> CompiledModule:
        """Read, validate and compile (or fetch from the caches) a module.

        Raises InvalidModule with the reason when the bytes are not a usable module. With
        `digest` ("sha256:<hex>"), the bytes must have that digest: a module store's blob
        changed on disk is refused instead of run under the digest it no longer has.
        """
        name, wasm = read_source(source, name)
        where = str(source) if isinstance(source, (str, os.PathLike)) and digest else name
        return self.load_bytes(name, wasm, limits or Limits(), digest=digest, where=where)

    def load_bytes(self, name: str, wasm: bytes, limits: Limits, *, digest: str | None = None,
                   where: str | None = None) -> CompiledModule:
        check_header(name, wasm)
        # the sha256 is also the key of the compiled code (in memory and on disk), so checking
        # an expected digest costs nothing a load did not already pay
        info_digest = hashlib.sha256(wasm).hexdigest()
        if digest is not None and digest != "sha256:" + info_digest:
            raise InvalidModule(f"module blob {where or name} has digest sha256:{info_digest}, not {digest} "
                                "(modified on disk; push the module again to repair it)")
        settings = self.settings_for(limits)
        engine = self.engine(settings)
        key = (info_digest, settings)
        module = self._modules.get(key)
        info = self._infos.get(info_digest)
        if module is None:
            module, info = self._compile(name, wasm, engine, "sha256:" + info_digest, settings,
                                         info)
            with self._lock:
                module = self._modules.setdefault(key, module)
        snapshot = self._plans.get(info_digest)
        if info is None:
            info = describe(name, wasm, module, engine, hidden=_hidden(snapshot))
        self._infos.setdefault(info_digest, info)
        if info.name != name:
            info = dataclasses.replace(info, name=name)
        return CompiledModule(info, wasm, module, engine, settings, self, snapshot)

    def _compile(self, name: str, wasm: bytes, engine: wasmtime.Engine, digest: str,
                 settings: EngineSettings, info: ModuleInfo | None,
                 ) -> tuple[wasmtime.Module | wc.Component, ModuleInfo | None]:
        """Compile, or load from the disk cache: a component (a Python one takes seconds to
        compile) loads from its serialized form in tens of milliseconds. The cache entry
        also holds the module's description, so a hit inspects nothing."""
        kind = wc.Component if wasm[4:8] == COMPONENT_VERSION else wasmtime.Module
        fp = settings.fingerprint()
        hexd = digest.split(":", 1)[1]
        if self.cache is not None:
            hit = self.cache.load_entry(engine, digest, fp, kind.deserialize_file)
            if hit is not None:
                module, record = hit
                try:
                    snap = record.get("snapshot")
                    self._plans[hexd] = None if snap is None else SnapshotPlan.from_record(snap)
                    return module, info or info_from_record(name, record)
                except (KeyError, TypeError, ValueError):
                    pass  # an unreadable description: compile and describe again
        snapshot, source = self._plan(hexd, wasm) if kind is wasmtime.Module else (None, wasm)
        try:
            module = kind(engine, source)
        except wasmtime.WasmtimeError as e:
            raise InvalidModule(f"invalid wasm: {_first_cause(e)}", module=name) from None
        info = info or describe(name, wasm, module, engine, hidden=_hidden(snapshot))
        if self.cache is not None:
            self.cache.store(module, digest, fp, info_to_record(info)
                             | {"snapshot": snapshot and snapshot.to_record()})
        return module, info

    def _plan(self, hexd: str, wasm: bytes) -> tuple[SnapshotPlan | None, bytes]:
        """(plan, the bytes to compile): the module with its mutable globals exported when its
        ready state can be snapshotted, else (None, the module as it is). Bytes planned before
        (compiled for another engine setting) are not checked again."""
        if hexd in self._plans and self._plans[hexd] is None:
            return None, wasm
        try:
            snapshot, source = plan(wasm, check_code=hexd not in self._plans)
        except Unplannable:
            snapshot, source = None, wasm
        self._plans[hexd] = snapshot
        return snapshot, source

    def forget(self, digest: str) -> None:
        """Drop in-memory compiled code of a module (the disk cache stays)."""
        hexd = digest.split(":", 1)[-1]
        with self._lock:
            for key in [k for k in self._modules if k[0] == hexd]:
                del self._modules[key]

    def close(self) -> None:
        self.ticker.stop()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _hidden(snapshot: SnapshotPlan | None) -> frozenset[str]:
    return frozenset(n for n, _ in snapshot.globals) if snapshot else frozenset()


def _first_cause(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    # wasmtime prints "failed to compile ... Caused by: 0: ... 1: <root cause>"; the root
    # cause is the most useful single line
    causes = [ln.split(":", 1)[1].strip() for ln in lines if ln[:1].isdigit() and ":" in ln]
    return causes[-1] if causes else (lines[0] if lines else "unknown error")
