"""Components (WIT world `iotwasm:module/processor`, wit/processor.wit) run like core modules.

A component exports `setup` and `process(batch: string) -> result<string, string>` and
imports only granted host interfaces. Per batch the host makes one call with the whole batch
as one string (component_batch.py) through the C API (component_fastcall.py), under the same
limits as a core module: memory through store limits, wall time through the epoch deadline,
fuel when metered.

A component's memory cannot be read from outside, so a trap mid-batch is handled by what the
guest committed: the SDKs call `batch.commit` after every input with lasting effects (log,
kv write, metric), the host keeps those inputs' outputs, and redoes the rest one message at a
time on a fresh instance — the failing message becomes a dead letter, the others their
outputs, and no effect happens twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import wasmtime
import wasmtime.component as wc

from ..errors import (
    AbiError,
    CapabilityDenied,
    GuestError,
    InitError,
    IotwasmError,
    MemoryLimitExceeded,
    OutputLimitExceeded,
)
from ..message import BatchResult, DeadLetter, Message, Output
from .component_batch import decode_outputs, encode_batch
from .component_fastcall import StringCall
from .component_host import BATCH, CAPABILITY_OF_INTERFACE, WORLD, active, define_host
from .component_types import EXPORTS, render_func, render_type
from .fastcall import CallFailed, StoreControl
from .host import HostContext
from .limits import Limits, format_size
from .module import ABI_COMPONENT, ExportInfo, ImportInfo, ModuleInfo, digest_of
from .traps import classify

if TYPE_CHECKING:
    from .runtime import CompiledModule

#: a component is several core instances (CPython or QuickJS, libc, adapters) in one store
STORE_INSTANCES = 200
STORE_MEMORIES = 20
STORE_TABLES = 200
#: the prefix an SDK puts on a `process` error when the guest ran out of memory
OUT_OF_MEMORY = "out of memory"


def describe_component(name: str, wasm: bytes, component: wc.Component,
                       engine: wasmtime.Engine) -> ModuleInfo:
    """The component's world: every imported interface function and every export."""
    ty = component.type
    imports: list[ImportInfo] = []
    for iname, ext in ty.imports(engine).items():
        item = ext.ty
        if isinstance(item, wc.ComponentInstanceType):
            for fname, fext in item.exports(engine).items():
                fty = fext.ty
                if isinstance(fty, wc.FuncType):
                    imports.append(ImportInfo(iname, fname, "func", render_func(fty)))
                else:  # a type the interface defines, e.g. log's `level`
                    imports.append(ImportInfo(iname, fname, "type", render_type(fty)))
        else:
            kind = "func" if isinstance(item, wc.FuncType) else type(item).__name__
            imports.append(ImportInfo(iname, "", kind,
                                      render_func(item) if isinstance(item, wc.FuncType) else kind))
    exports: list[ExportInfo] = []
    for ename, ext in ty.exports(engine).items():
        item = ext.ty
        if isinstance(item, wc.FuncType):
            exports.append(ExportInfo(ename, "func", render_func(item)))
        else:
            exports.append(ExportInfo(ename, type(item).__name__, ""))
    problems = []
    have = {e.name: e for e in exports}
    for fn, want in EXPORTS.items():
        if fn not in have:
            problems.append(f"missing export {fn!r} required by {WORLD}")
        elif have[fn].type != want:
            problems.append(f"export {fn} has type {have[fn].type}, expected {want}")
    return ModuleInfo(name, digest_of(wasm), len(wasm), ABI_COMPONENT, tuple(imports),
                      tuple(exports), problems=tuple(problems))


class ComponentFactory:
    """Links a component once per container (deny by default); makes guests."""

    def __init__(self, compiled: CompiledModule, limits: Limits, host: HostContext):
        self.name = compiled.name
        self.limits = limits
        self.host = host
        self.engine = compiled.engine
        self.runtime = compiled.runtime
        self.component = cast(wc.Component, compiled.module)  # prepare() sends only components here
        info = compiled.info
        if info.problems:
            raise AbiError(info.problems[0], module=self.name)
        imported = {i.module for i in info.imports}
        for iface in sorted(imported):
            if iface == BATCH:
                continue
            cap = CAPABILITY_OF_INTERFACE.get(iface)
            if cap is None:
                raise CapabilityDenied(f"imports {iface}, which no capability provides",
                                       module=self.name)
            if not host.capabilities.allows(cap):
                raise CapabilityDenied(f"imports {iface}, which needs capability {cap!r} "
                                       f"(not granted)", module=self.name)
        self.linker = wc.Linker(self.engine)
        define_host(self.linker, host, imported)
        self.ticks = self.runtime.timeout_ticks(limits.timeout_ms)

    def new_guest(self) -> ComponentGuest:
        return ComponentGuest(self)


class ComponentGuest:
    """One live instance of a component. Not thread-safe: the pool serialises use."""

    abi = ABI_COMPONENT

    def __init__(self, factory: ComponentFactory):
        self.f = factory
        self.recycled = 0
        self.broken: IotwasmError | None = None
        self._committed: list[bytes] = []
        self._done = 0
        self._start()

    # -- instance lifecycle --------------------------------------------------------------
    def _start(self) -> None:
        f = self.f
        store = wasmtime.Store(f.engine)
        store.set_limits(memory_size=f.limits.memory, table_elements=1_000_000,
                         instances=STORE_INSTANCES, tables=STORE_TABLES, memories=STORE_MEMORIES)
        self.store = store
        self.ctl = StoreControl(store, ticker=f.runtime.ticker)
        self._arm()
        try:   # start functions and the adapter's set-up are calls too
            instance = self.ctl.call(f.linker.instantiate, store, f.component)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            text = str(e).strip().splitlines()[0] if str(e).strip() else "failed"
            if "matching implementation was not found" in text or "wrong type" in str(e):
                raise AbiError(f"cannot link: {text}", module=f.name) from None
            err = classify(e, module=f.name, function="instantiate", limits=f.limits)
            raise InitError(str(err).split(": ", 1)[-1], module=f.name,
                            function="instantiate") from None
        # both present: a component missing either is refused when described (info.problems)
        self._process = StringCall(store, instance.get_func(store, "process"), "process", 1)  # type: ignore[arg-type]
        setup = StringCall(store, instance.get_func(store, "setup"), "setup", 0)  # type: ignore[arg-type]
        try:
            ok, out = self._invoke(setup, None)
        except IotwasmError as e:
            raise InitError(str(e).split(": ", 1)[-1], module=f.name, function="setup") from None
        if not ok:
            raise InitError((out or b"").decode("utf-8", "replace"), module=f.name,
                            function="setup")

    def _arm(self) -> None:
        self.ctl.set_deadline(self.f.ticks)
        if self.f.limits.fuel is not None:
            self.ctl.set_fuel(self.f.limits.fuel)

    def _invoke(self, fn: StringCall, data: bytes | None) -> tuple[bool, bytes | None]:
        self._arm()
        active.guest = self
        try:
            return self.ctl.call(fn, data)
        except CallFailed as e:
            wc._enter.LAST_EXCEPTION = None  # a failed host function parked it there too
            raise classify(e.cause, module=self.f.name, function=fn.name,
                           limits=self.f.limits) from None
        finally:
            active.guest = None

    def commit(self, done: int, outputs: str) -> None:
        """`batch.commit` from the guest: inputs before `done` are finished."""
        if outputs:
            self._committed.append(outputs.encode())
        self._done = done

    def recycle(self) -> None:
        """Replace the instance with a fresh one (after a trap its state is not trustworthy)."""
        self.recycled += 1
        self._start()

    def memory_pages(self) -> int:
        return 0  # a component's memories are internal to it

    def close(self) -> None:
        self._process = None  # type: ignore[assignment]
        self.store = None  # type: ignore[assignment]

    # -- the batch call ------------------------------------------------------------------
    def process(self, messages: Sequence[Message]) -> BatchResult:
        """Run a batch; every message ends up with its outputs or as a dead letter."""
        result = BatchResult()
        n = len(messages)
        start = 0
        one_by_one = False
        while start < n:
            if self.broken is not None:
                result.dead_letters.extend(DeadLetter(i, messages[i], self.broken)
                                           for i in range(start, n))
                break
            chunk = messages[start:start + 1] if one_by_one else messages[start:]
            done, failure = self._run(chunk, start, result)
            start += done
            if failure is None:
                continue
            if len(chunk) - done == 1 or one_by_one:
                # the failing message is known: it is the first one not finished
                result.dead_letters.append(DeadLetter(start, messages[start], failure))
                start += 1
            else:
                one_by_one = True  # redo the rest one at a time to pin the failing message
            self._recycle_or_break()
        return result

    def _run(self, chunk: Sequence[Message], base: int, result: BatchResult
             ) -> tuple[int, IotwasmError | None]:
        """One call; returns (inputs finished, failure). Finished inputs are in `result`."""
        f = self.f
        self._committed = []
        self._done = 0
        failure: IotwasmError | None = None
        out: bytes | None = None
        try:
            ok, out = self._invoke(self._process, encode_batch(chunk))
            if not ok:
                failure = self._guest_failure((out or b"").decode("utf-8", "replace"))
        except IotwasmError as e:
            failure = e
        if f.limits.fuel is not None:
            result.fuel_used += f.limits.fuel - self.ctl.get_fuel()
        done = len(chunk) if failure is None else min(self._done, len(chunk))
        records = self._committed if failure is not None else [*self._committed, out or b""]
        try:
            if sum(len(r) for r in records) > f.limits.max_output:
                raise OutputLimitExceeded(f"outputs exceed max_output "
                                          f"{format_size(f.limits.max_output)}",
                                          module=f.name, function="process")
            outputs: list[Output] = []
            rejects: list[tuple[int, str]] = []
            for rec in records:
                o, r = decode_outputs(rec, chunk, base)
                outputs += o
                rejects += r
        except IotwasmError as e:
            if isinstance(e, AbiError):
                e = AbiError(str(e), module=f.name, function="process")
            return 0, e  # nothing of this call can be trusted: redo it message by message
        result.outputs.extend(o for o in outputs if o.index < base + done)
        result.dead_letters.extend(
            DeadLetter(i, chunk[i - base], GuestError(text, module=f.name, function="process"))
            for i, text in rejects if i < base + done)
        return done, failure

    def _guest_failure(self, text: str) -> IotwasmError:
        f = self.f
        if text.startswith(OUT_OF_MEMORY):
            return MemoryLimitExceeded(f"memory limit {format_size(f.limits.memory)} reached "
                                       f"(the guest ran out of memory)", module=f.name,
                                       function="process")
        return GuestError(f"failed: {text}", module=f.name, function="process")

    def _recycle_or_break(self) -> None:
        try:
            self.recycle()
        except IotwasmError as e:
            self.broken = e
