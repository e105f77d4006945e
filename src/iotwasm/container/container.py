"""WasmContainer: a module plus its limits, capabilities and a pool of instances.

The container is the unit people deploy. It moves through the lifecycle state machine, keeps
N replicas (instances) behind a load-balancing strategy, counts what every instance does,
and restarts itself with exponential backoff after failures, as its restart policy says.

Thread-safe: several threads may call `process` at once; each batch runs on one idle
instance, and wasm runs without holding the GIL, so replicas really run in parallel.

An instance in use is never closed. Restarts, crash-loop recovery, scaling down and replacing
a broken instance run on other threads while batches are inside instances; an instance they
take out of the pool while it is busy is *retired*: it finishes its batch and is closed when
released. (Closing it earlier would free its wasmtime Store under the running call, and
wasmtime aborts the whole process.)
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from typing import Any, Callable, Sequence

from ..engine import (
    Capabilities,
    CompiledModule,
    GuestFactory,
    HostContext,
    KeyValue,
    Limits,
    Runtime,
    prepare,
)
from ..engine.module import ModuleSource
from ..errors import (
    SANDBOX_FAULTS,
    AbiError,
    CapabilityDenied,
    ConfigError,
    ContainerUnavailable,
    GuestTrap,
    InvalidModule,
    IotwasmError,
)
from ..message import BatchResult, DeadLetter, Message
from .balancing import make_strategy
from .lifecycle import Lifecycle, State, Transition
from .policy import RestartPolicy
from .pool import PoolMixin
from .scaling import InstanceBudget, Scaling
from .stats import ContainerStats, InstanceStats, ScalingStats, Slot

log = logging.getLogger("iotwasm.container")

#: the restart backoff's jitter for containers given no random source of their own: one
#: generator's state is 2.5 KiB, a quarter of what an idle container holds otherwise
_JITTER = random.Random()

#: failures that will happen again on every attempt: retrying them is pointless
PERMANENT = (InvalidModule, AbiError, CapabilityDenied, ConfigError)


class WasmContainer(PoolMixin):
    """A deployed module: lifecycle, instances on demand, load balancing, stats and restarts."""

    def __init__(self, name: str, module: ModuleSource | CompiledModule, *, runtime: Runtime,
                 limits: Limits | None = None, capabilities: Capabilities | None = None,
                 replicas: int = 1, strategy: str = "round-robin",
                 weights: Sequence[int] | None = None, restart: RestartPolicy | None = None,
                 kv: KeyValue | None = None, digest: str | None = None,
                 on_log: Callable[[str, int, str], None] | None = None,
                 on_metric: Callable[[str, int, str, float], None] | None = None,
                 on_transition: Callable[[Transition], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None,
                 scaling: Scaling | None = None, budget: InstanceBudget | None = None):
        """`clock` (monotonic seconds) and `rng` (the restart backoff's jitter) are injectable
        so that restart timing and idling can be tested without waiting. `scaling` (instances
        between a min and a max, spares, cool-down) replaces `replicas` (= a fixed number);
        `budget` is the node-wide one its instances count against."""
        self.name = name
        self.runtime = runtime
        self.limits = limits or Limits()
        self.restart_policy = restart or RestartPolicy()
        self._source = module
        #: the digest `module` (a path) must still have at every load: a store's blob edited
        #: on disk is refused, not run
        self._digest = digest
        self._strategy_name = strategy
        self.strategy = make_strategy(strategy)
        self._weights = list(weights) if weights else None
        if scaling is None:
            self._check_replicas(replicas)
            scaling = Scaling.fixed(replicas)
        scaling.check(self.limits.max_instances, name)
        self._scaling = scaling
        #: the node's budget, when it has limits (an unlimited one has nothing to count)
        self._budget = budget if budget is not None and budget.limited else None
        self._growing = 0          # places reserved for instances being made (pool.py)
        self._pages_hint = 0       # linear memory pages of its largest instance so far
        self._past = InstanceStats(-1)   # what instances no longer in the pool did
        self.scaling_stats = ScalingStats()
        self.host = HostContext(name, capabilities or Capabilities(), kv=kv, on_metric=on_metric)
        if on_log:
            self.host.on_log = on_log
        self.lifecycle = Lifecycle(name, on_transition)
        self.compiled: CompiledModule | None = None
        self._factory: GuestFactory | None = None
        self._slots: list[Slot] = []
        self._retired: list[Slot] = []  # out of the pool, still running a batch
        # a plain lock under the condition: no path takes it twice, and it is taken twice per
        # batch, where an RLock costs more than a batch of one's guest call
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # `with self._lock` holds it too, faster
        self._waiters = 0  # threads in _wait(); read and written with _cond held
        self._admin = threading.RLock()  # serialises start/stop/scale/restart
        self.restarts = 0
        self._clock = clock
        self._backoff = self.restart_policy.backoff(rng or _JITTER)
        self._next_restart_at: float | None = None
        self._running_since = 0.0
        self._failed_batches = 0
        self.last_error: IotwasmError | None = None

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def state(self) -> State:
        return self.lifecycle.state

    def start(self) -> "WasmContainer":
        """Load, instantiate every replica and start running. Raises the typed failure."""
        with self._admin:
            try:
                self._bring_up("start")
            except IotwasmError as e:
                self._fail(e)
                raise
        return self

    def _bring_up(self, reason: str) -> None:
        lc = self.lifecycle
        if self.compiled is None or reason != "start":
            self.compiled = (self._source if isinstance(self._source, CompiledModule)
                             else self.runtime.load(self._source, name=self.name, limits=self.limits,
                                                   digest=self._digest))
        lc.move(State.LOADED, f"{reason}: {self.compiled.info.abi} module "
                              f"{self.compiled.info.short_digest} loaded")
        self._factory = prepare(self.compiled, self.limits, self.host)
        slots = [Slot(i, self._factory.new_guest(), self._weight(i), self._clock())
                 for i in range(self._scaling.min)]
        # what a new instance will need, for the budget: its largest so far, at first the
        # module's declared initial memory
        self._pages_hint = max(self._pages_hint, self.compiled.info.memory_min_pages or 0,
                               *(s.stats.memory_pages for s in slots))
        with self._cond:
            for slot in slots:
                self._count_in(slot)
            self._retire(self._slots)
            self._slots = slots
        lc.move(State.INSTANTIATED, f"{len(slots)} instance(s)")
        lc.move(State.RUNNING, reason)
        self._running_since = self._clock()
        self._failed_batches = 0

    def suspend(self, reason: str = "suspended") -> None:
        """Stop taking batches (callers get ContainerUnavailable); instances stay warm."""
        self.lifecycle.move(State.SUSPENDED, reason)

    def resume(self, reason: str = "resumed") -> None:
        self.lifecycle.move(State.RUNNING, reason)

    def stop(self, reason: str = "stopped") -> None:
        """Terminate: wait for in-flight batches (retired instances' too), then release every
        instance."""
        with self._admin:
            if self.state == State.TERMINATED:
                return
            self.lifecycle.move(State.TERMINATED, reason)
            with self._cond:
                while self._retired or any(s.busy for s in self._slots):
                    self._wait()
                self._retire(self._slots)
                self._slots = []
                self._cond.notify_all()
            if self._budget is not None:
                self._budget.forget(self)

    def restart(self, reason: str = "manual restart") -> None:
        """Bring a container in error back now, whatever its policy and backoff say."""
        with self._admin:
            if self.state != State.ERROR:
                self._fail(None, f"{reason}")
            self._try_restart(reason)

    def _fail(self, err: IotwasmError | None, reason: str | None = None) -> None:
        if err is not None:
            self.last_error = err
            log.warning("container %s failed: %s", self.name, err)
        if self.lifecycle.can(State.ERROR):
            self.lifecycle.move(State.ERROR, reason or str(err))
        delay = self._backoff.next()
        if self._will_restart(err):
            self._next_restart_at = self._clock() + delay
        else:
            self._next_restart_at = None

    def _will_restart(self, err: IotwasmError | None) -> bool:
        p = self.restart_policy
        if p.mode == "never":
            return False
        if p.mode == "on-failure":
            if isinstance(err, PERMANENT):
                return False
            if p.max_restarts is not None and self.restarts >= p.max_restarts:
                return False
        return True

    def restart_due_in(self) -> float | None:
        """Seconds until the next automatic restart attempt; None if none is planned."""
        if self.state != State.ERROR or self._next_restart_at is None:
            return None
        return max(0.0, self._next_restart_at - self._clock())

    def tick(self) -> None:
        """Attempt a due restart. Callers with a sync loop call this periodically."""
        due = self.restart_due_in()
        if due is not None and due == 0:
            with self._admin:
                if self.restart_due_in() == 0:
                    self._try_restart("automatic restart")

    def _try_restart(self, reason: str) -> None:
        try:
            self._bring_up(f"{reason} #{self.restarts + 1}")
        except IotwasmError as e:
            self._fail(e)
            return
        self.restarts += 1
        log.info("container %s restarted (%s)", self.name, reason)

    # -- work ----------------------------------------------------------------------------
    def process(self, messages: Sequence[Message]) -> BatchResult:
        """Run a batch on one idle instance.

        Every message comes back as outputs or a dead letter. Raises ContainerUnavailable
        (having consumed nothing) when the container is not running.
        """
        if not messages:
            return BatchResult()
        slot = self._take_idle()
        if slot is None:
            if self.lifecycle.state is not State.RUNNING:
                self._ensure_running()
            slot = self._acquire()
        guest = slot.guest
        t0 = time.perf_counter()
        busy = 0.0
        lost: IotwasmError | None = None
        try:
            try:
                result = guest.process(messages)
            except Exception as e:  # a bug, not a guest failure: never take the caller down
                log.exception("container %s: unexpected failure in batch", self.name)
                err = GuestTrap(f"internal error: {e!r}", module=self.name)
                guest.broken = err
                result = BatchResult(dead_letters=[DeadLetter(i, m, err) for i, m in enumerate(messages)])
            busy = time.perf_counter() - t0
            self._account(slot, messages, result, busy)
            if guest.broken is not None:
                lost = self._replace(slot)
                busy = time.perf_counter() - t0
        finally:
            self._release(slot, busy)
        if lost is not None:
            # after the release: stop() holds _admin while it waits for busy instances
            with self._admin:
                if not slot.retired:
                    self._fail(lost)
        if result.dead_letters or self._failed_batches or self._backoff.failures:
            self._watch_health(messages, result)  # nothing to watch in a clean batch otherwise
        return result

    def _ensure_running(self) -> None:
        state = self.state
        if state == State.RUNNING:
            return
        if state == State.ERROR:
            self.tick()
            if self.state == State.RUNNING:
                return
            due = self.restart_due_in()
            when = f"; restart in {due:.1f}s" if due is not None else "; no restart planned"
            raise ContainerUnavailable(f"in error ({self.last_error}){when}", module=self.name)
        raise ContainerUnavailable(f"is {state}, not running", module=self.name)

    def _account(self, slot: Slot, messages: Sequence[Message], result: BatchResult, elapsed: float) -> None:
        st = slot.stats
        st.calls += 1
        st.messages += len(messages)
        st.outputs += len(result.outputs)
        dead = result.dead_letters
        if dead:
            st.dead_letters += len(dead)
            for d in dead:
                st.errors[d.error.kind] += 1
                st.faults += isinstance(d.error, SANDBOX_FAULTS)
        if result.fuel_used:
            st.fuel_used += result.fuel_used
        guest = slot.guest
        pages = guest.memory_pages()
        if pages != st.memory_pages:
            st.memory_pages = pages
            st.peak_memory_pages = max(st.peak_memory_pages, pages)
            if pages > self._pages_hint:
                self._pages_hint = pages
            self._recount(slot)
        if guest.recycled != st.recycles:
            st.recycles = guest.recycled
        ms = elapsed * 1000
        st.last_latency_ms = ms
        st.total_latency_ms += ms

    def _replace(self, slot: Slot) -> IotwasmError | None:
        """A guest that could not recover after a trap is swapped for a new instance.

        Called by the thread whose batch just used it, before it releases the slot: the guest
        is not in use by anyone else. A slot retired meanwhile gets no new instance. Returns
        the error when no new instance could be made (the container has then failed)."""
        if slot.retired:
            return None
        factory = self._factory
        assert factory is not None  # a slot exists only once the container was brought up
        try:
            guest = factory.new_guest()
        except IotwasmError as e:
            slot.guest.broken = e  # keeps refusing work until the container restarts
            return e
        old, slot.guest = slot.guest, guest
        old.close()
        return None

    def _watch_health(self, messages: Sequence[Message], result: BatchResult) -> None:
        dead = result.dead_letters
        hard = sum(1 for d in dead if isinstance(d.error, SANDBOX_FAULTS)) if dead else 0
        if hard and hard == len(messages):
            self._failed_batches += 1
        else:
            self._failed_batches = 0
            if self._backoff.failures and \
                    self._clock() - self._running_since > self.restart_policy.reset_after_s:
                self._backoff.reset()
        if self._failed_batches >= self.restart_policy.crash_loop_batches and self.state == State.RUNNING:
            err = result.dead_letters[-1].error
            with self._admin:
                if self.state == State.RUNNING:
                    self._fail(err, f"crash loop: {self._failed_batches} batches in a row failed; "
                                    f"last: {err}")
                    self._failed_batches = 0

    # -- observability -------------------------------------------------------------------
    def ready_guests(self) -> dict[str, Any] | None:
        """How new instances get ready (iotwasm-v1 modules): from a snapshot of the first one's
        init (`snapshot`), or running init each (`why_not` says why); None for other kinds
        or before the container was brought up."""
        snapshots = getattr(self._factory, "snapshots", None)
        return None if snapshots is None else snapshots.describe()

    def stats(self) -> ContainerStats:
        with self._cond:
            instances = tuple(_copy(s.stats) for s in self._slots)
            past = _copy(self._past)
            scaling = ScalingStats(**self.scaling_stats.to_dict())
        info = self.compiled.info if self.compiled else None
        sc = self._scaling
        return ContainerStats(self.name, str(self.state), info.name if info else "",
                              info.digest if info else "", len(instances), self.restarts,
                              instances, str(self.last_error) if self.last_error else None,
                              sc.min, sc.max, sc.prewarm, scaling, past)

    def __repr__(self) -> str:
        sc = self._scaling
        return f"<WasmContainer {self.name} {self.state} replicas={sc.min}..{sc.max}>"

    def __enter__(self) -> "WasmContainer":
        if self.state == State.CREATED:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _copy(s: InstanceStats) -> InstanceStats:
    return InstanceStats(**{**s.__dict__, "errors": Counter(s.errors)})
