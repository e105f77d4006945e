"""A container's pool of instances: which one takes a batch, and how many there are.

`WasmContainer` keeps its instances here (`PoolMixin`): it takes an idle one for each batch,
instantiates one more when every instance is busy — or there is none: scale from zero — up to
`Scaling.max`, and `maintain()` closes instances that idled for the cool-down down to
`Scaling.min` and keeps `Scaling.prewarm` spares ready (see `container/scaling.py`).

The store-lifetime rule holds throughout: an instance leaves the pool under the pool's lock,
and only when it is idle is it closed there; a busy one is *retired* and closed by the batch
that releases it. Instantiation never runs under that lock (it may take milliseconds, and other
batches must go on meanwhile): a place in the pool is reserved (`_growing`) first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..errors import ConfigError, ContainerUnavailable, IotwasmError
from .lifecycle import State
from .scaling import BudgetSpent, InstanceBudget, Scaling
from .stats import PAGE, InstanceStats, ScalingStats, Slot, add_up

if TYPE_CHECKING:
    from ..engine import GuestFactory, Limits
    from .balancing import Strategy
    from .lifecycle import Lifecycle

_RUNNING = State.RUNNING


class PoolMixin:
    """The instance pool of `WasmContainer` (its attributes are made in its __init__)."""

    name: str
    limits: Limits
    strategy: Strategy
    _factory: GuestFactory | None
    lifecycle: Lifecycle
    _slots: list[Slot]
    _retired: list[Slot]
    #: a plain Lock under the Condition (no path takes it twice); `with _lock` holds `_cond`
    _lock: threading.Lock
    _cond: threading.Condition
    _waiters: int
    _admin: threading.RLock
    _clock: Callable[[], float]
    _weights: list[int] | None
    _scaling: Scaling
    _budget: InstanceBudget | None
    _growing: int
    _pages_hint: int
    _past: InstanceStats
    scaling_stats: ScalingStats

    if TYPE_CHECKING:
        @property
        def state(self) -> State: ...  # WasmContainer's

    # -- how many ------------------------------------------------------------------------
    def _check_scaling(self, scaling: Scaling) -> None:
        scaling.check(self.limits.max_instances, self.name)

    def _check_replicas(self, n: int) -> None:
        if not 1 <= n <= self.limits.max_instances:
            raise ConfigError(f"replicas {n} must be between 1 and max_instances "
                              f"{self.limits.max_instances}", module=self.name)

    def _weight(self, i: int) -> int:
        if self._weights and i < len(self._weights):
            return max(1, int(self._weights[i]))
        return 1

    @property
    def replicas(self) -> int:
        """The most instances it may run at once (route lanes and invocation threads follow it)."""
        return self._scaling.max

    @property
    def scaling(self) -> Scaling:
        return self._scaling

    @property
    def instances(self) -> int:
        """How many instances it holds now."""
        with self._cond:
            return len(self._slots)

    def scale(self, replicas: int) -> None:
        """A fixed number of instances (min = max), keeping the prewarm and cool-down."""
        self._check_replicas(replicas)
        s = self._scaling
        self.set_scaling(Scaling(replicas, replicas, min(s.prewarm, replicas), s.cooldown_s))

    def set_scaling(self, scaling: Scaling) -> None:
        """New bounds while running: instances below `min` are made now, those above `max`
        leave (idle ones first; a busy one finishes its batch and is closed then — scaling
        down never waits)."""
        self._check_scaling(scaling)
        with self._admin:
            self._scaling = scaling
            if self.state not in (State.RUNNING, State.SUSPENDED) or self._factory is None:
                return
            with self._cond:
                current = len(self._slots)
            new = [Slot(i, self._factory.new_guest(), self._weight(i), self._clock())
                   for i in range(current, scaling.min)]
            with self._cond:
                for slot in new:
                    self._count_in(slot)
                self._slots.extend(new)
                # idle instances are the first to go: a busy one stays in the pool if it can
                keep = sorted(self._slots, key=lambda s: not s.busy)[:scaling.max]
                self._retire([s for s in self._slots if s not in keep])
                self._slots = sorted(keep, key=lambda s: s.index)
                self._reindex()
                self._cond.notify_all()
            if self._budget is not None:
                self._budget.touch(self)   # what it may give up changed

    def _reindex(self) -> None:
        for i, s in enumerate(self._slots):
            s.index = i
            s.stats.index = i

    def _retire(self, slots: Sequence[Slot]) -> None:
        """Take `slots` out of service (call with `_cond` held): idle instances are closed now,
        busy ones when their batch releases them — never under a running call."""
        for s in slots:
            if s.busy:
                if not s.retired:
                    s.retired = True
                    self._retired.append(s)
            else:
                add_up(self._past, s.stats)
                s.guest.close()
                self._count_out(s)

    # -- taking and giving back ----------------------------------------------------------
    def _take_idle(self) -> Slot | None:
        """The common case of taking an instance, in one step: the only instance of a running
        container, idle. None: anything else (`_acquire` then decides)."""
        with self._lock:
            slots = self._slots
            if len(slots) == 1 and not (slot := slots[0]).busy and self.lifecycle.state is _RUNNING:
                slot.busy = True
                return slot
        return None

    def _acquire(self) -> Slot:
        grow = True
        while True:
            with self._lock:
                while True:
                    if self.state == State.TERMINATED or self._factory is None:
                        raise ContainerUnavailable(f"is {self.state}, not running", module=self.name)
                    slots = self._slots
                    if len(slots) == 1:  # the common case needs no strategy
                        if not slots[0].busy:
                            slots[0].busy = True
                            return slots[0]
                    elif slots:
                        idle = [s for s in slots if not s.busy]
                        if idle:
                            slot = self.strategy.pick(idle, len(slots))
                            slot.busy = True
                            return slot
                    if grow and len(slots) + self._growing < self._scaling.max:
                        self._growing += 1
                        factory = self._factory
                        break
                    if not slots and not self._growing:
                        raise ContainerUnavailable("has no instance and may make none now", module=self.name)
                    self._wait()
            try:
                return self._grow(factory, busy=True)
            except BudgetSpent:
                with self._cond:
                    has = bool(self._slots) or self._growing > 0
                if not has:
                    raise
                grow = False   # wait for one of its own instances instead
            except _Stale:
                continue

    def _grow(self, factory: GuestFactory, busy: bool) -> Slot:
        """Instantiate one instance in the place reserved in `_growing` (outside the lock)."""
        budget, need = self._budget, self._pages_hint * PAGE
        admitted = False
        try:
            if budget is not None:
                budget.admit(self, need)   # reserves it in the budget
                admitted = True
            guest = factory.new_guest()
        except IotwasmError as e:
            if admitted and budget is not None:
                budget.add(-1, -need)
            with self._cond:
                self._growing -= 1
                self._cond.notify_all()
            if isinstance(e, ContainerUnavailable):
                raise
            raise ContainerUnavailable(f"cannot make an instance: {e}", module=self.name) from e
        slot = Slot(0, guest, 1, self._clock())
        if admitted:
            slot.counted = need
        with self._cond:
            self._growing -= 1
            if self._factory is not factory or self.state == State.TERMINATED:
                guest.close()   # a restart or stop came between: this instance is of no version
                self._count_out(slot)
                self._cond.notify_all()
                raise _Stale()
            self._recount(slot)
            slot.index = slot.stats.index = len(self._slots)
            slot.weight = self._weight(slot.index)
            slot.busy = busy
            st = self.scaling_stats
            if busy:
                st.scale_ups += 1
                st.from_zero += not self._slots
            else:
                st.prewarmed += 1
            self._pages_hint = max(self._pages_hint, slot.stats.memory_pages)
            self._slots.append(slot)
            self._cond.notify_all()
        if not busy and budget is not None:
            budget.touch(self)   # a spare is idle from the start
        return slot

    def _wait(self) -> None:
        """Wait on `_cond` (held), counted so that a release wakes someone only when someone
        waits. Every wait on `_cond` goes through here: an uncounted waiter would not be woken."""
        self._waiters += 1
        try:
            self._cond.wait()
        finally:
            self._waiters -= 1

    def _release(self, slot: Slot, busy: float) -> None:
        # the slot is still this caller's alone: only `busy` needs the lock
        slot.busy_seconds += busy
        slot.last_used = self._clock()
        slot.stats.last_used = time.time()
        with self._lock:
            slot.busy = False
            if slot.retired:
                self._retired.remove(slot)
                add_up(self._past, slot.stats)
                slot.guest.close()  # its batch is over: nothing runs in it any more
                self._count_out(slot)
                self._cond.notify_all()  # stop() may be waiting for the last one
                return
            if self._waiters:  # notify() costs more than a batch of one: only when needed
                self._cond.notify()
        if self._budget is not None:
            self._budget.touch(self)   # an idle instance, used just now

    # -- idling, spares and the budget ----------------------------------------------------
    def maintain(self) -> None:
        """Close instances idle for the cool-down beyond what is needed (`min`, or the busy
        ones plus `prewarm` spares), and make the spares that are missing. Instantiates: call
        it off any event loop (the node does, when `upkeep_due` says so)."""
        with self._cond:
            factory = self._factory
            if factory is None or not self._kept_up():
                return
            idle, missing = self._upkeep(self._clock())
            if idle:
                self._slots = [s for s in self._slots if s not in idle]
                self._retire(idle)
                self._reindex()
                self.scaling_stats.scale_downs += len(idle)
            if missing > 0:
                self._growing += missing
        for made in range(max(0, missing)):
            try:
                self._grow(factory, busy=False)
            except (ContainerUnavailable, _Stale):
                with self._cond:   # give back the places not used
                    self._growing -= missing - made - 1
                    self._cond.notify_all()
                return

    def upkeep_due(self) -> bool:
        """Whether `maintain` has anything to do now. It never instantiates, so a node asks on
        its event loop and hands `maintain` to a thread only when the answer is yes: a quiet
        node's instances need nothing most seconds, and the hop cost more than the look."""
        with self._cond:
            if not self._kept_up():
                return False
            idle, missing = self._upkeep(self._clock())
            return bool(idle) or missing > 0

    def _kept_up(self) -> bool:
        return self.state in (State.RUNNING, State.SUSPENDED) and self._factory is not None

    def _upkeep(self, now: float) -> tuple[list[Slot], int]:
        """Under `_cond`: the instances idle past their cool-down to close, oldest first, and
        the number of spares missing once they are closed."""
        sc = self._scaling
        busy = sum(1 for s in self._slots if s.busy)
        target = min(sc.max, max(sc.min, busy + sc.prewarm))
        excess = len(self._slots) - target
        idle: list[Slot] = []
        if excess > 0:
            idle = sorted((s for s in self._slots if not s.busy and now - s.last_used >= sc.cooldown_s),
                          key=lambda s: s.last_used)[:excess]
        return idle, target - (len(self._slots) - len(idle)) - self._growing

    def holding(self) -> tuple[int, int]:
        """(instances, bytes of linear memory as last seen) this container holds now."""
        with self._cond:
            return len(self._slots), sum(s.stats.memory_pages for s in self._slots) * PAGE

    # -- what the budget counts (`_acct` is a leaf lock: safe under `_cond`) ----------------
    def _count_in(self, slot: Slot) -> None:
        """An instance made without asking the budget (a min one) counts all the same."""
        if self._budget is not None and slot.counted is None:
            slot.counted = slot.stats.memory_pages * PAGE
            self._budget.add(1, slot.counted)

    def _count_out(self, slot: Slot) -> None:
        if self._budget is not None and slot.counted is not None:
            self._budget.add(-1, -slot.counted)
            slot.counted = None

    def _recount(self, slot: Slot) -> None:
        """Its memory as last seen (after instantiation, after each batch)."""
        if self._budget is not None and slot.counted is not None:
            now = slot.stats.memory_pages * PAGE
            if now != slot.counted:
                self._budget.add(0, now - slot.counted)
                slot.counted = now

    def evict_idle(self) -> bool:
        """Close its least recently used idle instance for another container (never a busy
        one, never below `min`). False when it has none to give any more."""
        with self._cond:
            if len(self._slots) <= self._scaling.min:
                return False
            idle = [s for s in self._slots if not s.busy]
            if not idle:
                return False
            victim = min(idle, key=lambda s: s.last_used)
            self._slots.remove(victim)
            self._retire([victim])
            self._reindex()
            self.scaling_stats.evictions += 1
            return True


class _Stale(Exception):
    """An instance made for a version that a restart or stop replaced meanwhile."""
