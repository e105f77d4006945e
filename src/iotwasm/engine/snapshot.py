"""Ready guests from a snapshot of an initialised instance, instead of running `iot_init` again.

Every instance of a container starts the same way: instantiate (data segments, start
function), `iot_abi_version`, `iot_init`. Init usually reads its configuration through host
calls (~15 µs each through ctypes) and fills a few buffers; with three keys that was more than
half of a ready guest's cost. Its outcome depends only on the module and the container's
configuration, so the first guest of a factory records it and every later guest (a scale-up,
a replacement after a trap, a module instance on demand) gets it copied in.

What makes that exact:
- the module's whole state is its memory and its numeric globals (checked from the bytes,
  engine/wasm_scan.py; its mutable globals are exported so the host can read and set them);
- the first guest's start, version check and init made no host call other than
  `iot.config_get`, whose answers are fixed for the factory's lifetime (its configuration
  does not change), and `iot.log`, whose lines are recorded and logged again for every
  instance that gets the snapshot: a call to the clock, randomness, the key-value store,
  WASI or anything else means init might not do the same twice, and that factory never
  snapshots;
- init succeeded.

A new guest is then: instantiate, grow memory to the recorded size, write the ranges init
changed (compared against a fresh instance, in 256-byte blocks) and set the globals it
changed. Budgets (epoch deadline, fuel) are per call and start afresh either way.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from wasmtime import _bindings as ffi

from .fastcall import GLOBAL, Exports, global_setter, global_value, set_global
from .guest_memory import GuestMemory
from .hostcall import watch
from .wasm_scan import SnapshotPlan

log = logging.getLogger("iotwasm.engine.snapshot")

#: host functions init may call and still be the same for every instance of a factory:
#: config answers are fixed for its lifetime, and the lines init logs are recorded and logged
#: again for every instance that gets the snapshot
PURE_DURING_INIT = frozenset({"iot.config_get", "iot.log"})
_PAGE = 65536
_BLOCK = 256


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What init changed: memory size in pages, (offset, bytes) ranges, (export, value)
    globals, and the (level, text) lines it logged."""

    pages: int
    ranges: tuple[tuple[int, bytes], ...]
    globals: tuple[tuple[bytes, ffi.wasmtime_val_t], ...]
    logs: tuple[tuple[int, str], ...] = ()

    def restore(self, exports: Exports, mem: GuestMemory) -> None:
        have = mem.size() // _PAGE
        if self.pages > have:
            mem.grow(self.pages - have)
        for offset, data in self.ranges:
            mem.write(offset, data)
        for name, val in self.globals:
            set_global(exports.ctx, exports.get(name, GLOBAL), val)  # type: ignore[arg-type]  # planned: present


def _read_globals(plan: SnapshotPlan, exports: Exports) -> list[int | float]:
    return [global_value(exports.ctx, exports.get(n.encode(), GLOBAL), t)  # type: ignore[arg-type]
            for n, t in plan.globals]


def _changed(before: bytes, after: memoryview) -> tuple[tuple[int, bytes], ...]:
    """The ranges of `after` that differ from `before` (zeros past its end), in whole blocks,
    adjacent blocks merged."""
    out: list[tuple[int, bytes]] = []
    start = -1
    n = len(after)
    if len(before) < n:
        before += bytes(n - len(before))  # memory init grew starts zeroed
    for off in range(0, n, _BLOCK):
        same = after[off:off + _BLOCK] == before[off:off + _BLOCK]
        if not same and start < 0:
            start = off
        elif same and start >= 0:
            out.append((start, after[start:off].tobytes()))
            start = -1
    if start >= 0:
        out.append((start, after[start:n].tobytes()))
    return tuple(out)


class Recording:
    """The first guest's start-up, watched: the state of the fresh instance, and every host
    call made until `finish`."""

    __slots__ = ("calls", "failed", "fresh", "fresh_globals", "logs", "_prev")

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.logs: list[tuple[int, str]] = []
        self.failed: Exception | None = None
        self.fresh = b""
        self.fresh_globals: list[int | float] = []
        self._prev = (getattr(watch, "calls", None), getattr(watch, "logs", None))
        watch.calls, watch.logs = self.calls, self.logs

    def instantiated(self, plan: SnapshotPlan, exports: Exports, mem: GuestMemory) -> None:
        try:
            self.fresh = mem.view().tobytes()
            self.fresh_globals = _read_globals(plan, exports)
        except Exception as e:  # noqa: BLE001 - reported by Snapshots.finish; the guest goes on
            self.failed = e

    def stop(self) -> None:
        watch.calls, watch.logs = self._prev


class Snapshots:
    """A factory's snapshot: taken from its first guest, restored into every later one."""

    def __init__(self, plan: SnapshotPlan | None, why_not: str | None = None):
        """`why_not`: a reason not to snapshot known to the factory (the plan can be None
        because the module's state is more than memory and globals)."""
        self.plan = plan if why_not is None else None
        self.snapshot: Snapshot | None = None
        #: why this factory's guests run init themselves (None while it may still snapshot)
        self.why_not = why_not or (None if plan is not None else
                                   "module state beyond memory and globals")
        self._lock = threading.Lock()
        self._recording = False

    def record(self) -> Recording | None:
        """A recording of the next guest's start-up, when a snapshot is still to be taken
        (one guest records at a time)."""
        if self.why_not is not None or self.snapshot is not None:
            return None
        with self._lock:
            if self._recording:
                return None
            self._recording = True
        return Recording()

    def finish(self, rec: Recording, exports: Exports | None, mem: GuestMemory | None) -> None:
        """End `rec`; with `exports` and `mem` (init succeeded) keep what it left."""
        rec.stop()
        try:
            if exports is None or mem is None or self.plan is None:
                return  # failed: the next guest records again
            impure = sorted(set(rec.calls) - PURE_DURING_INIT)
            if impure:
                self.why_not = f"init calls {', '.join(impure)}"
                return
            if rec.failed is not None:
                raise rec.failed
            after = _read_globals(self.plan, exports)
            changed = tuple((n.encode(), global_setter(t, v)) for (n, t), v, v0
                            in zip(self.plan.globals, after, rec.fresh_globals) if v != v0)
            self.snapshot = Snapshot(mem.size() // _PAGE, _changed(rec.fresh, mem.view()), changed,
                                     tuple(rec.logs))
        except Exception as e:  # noqa: BLE001 - a snapshot is an optimisation: never fail a guest for it
            log.warning("no snapshot of a ready instance: %s: %s", type(e).__name__, e)
            self.why_not = f"the snapshot could not be taken ({type(e).__name__})"
        finally:
            with self._lock:
                self._recording = False

    def describe(self) -> dict[str, Any]:
        """{"snapshot": bool, "why_not": reason or None, "bytes": copied into each instance}."""
        snap = self.snapshot
        why = self.why_not or (None if snap else "no instance has finished starting yet")
        return {"snapshot": snap is not None, "why_not": why,
                "bytes": sum(len(d) for _, d in snap.ranges) if snap else 0}
