"""A deployment on a node: the running container of its current version, hot updates and
automatic rollback.

Hot update: the new version's container is started next to the old one (instances created,
init run) *before* any traffic moves. The swap is one reference assignment between batches, so
no message is lost or handled twice: batches already running finish on the old version, the
next batch runs on the new one. The old container stays warm until the new version passes its
health gate — its first N messages must trap (or hit limits) at most at the allowed rate —
and is stopped afterwards. If the gate fails, traffic swaps back at once and the reason is
recorded. A new version that cannot even start is refused and the old one keeps running.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

from ..container import WasmContainer
from ..errors import SANDBOX_FAULTS, ContainerUnavailable
from ..message import BatchResult, Message
from ..messaging.acl import TopicACL

log = logging.getLogger("iotwasm.node")


@dataclass
class Gate:
    messages: int
    max_trap_rate: float
    seen: int = 0
    failed: int = 0

    def record(self, result: BatchResult, n: int) -> None:
        self.seen += n
        self.failed += sum(1 for d in result.dead_letters if isinstance(d.error, SANDBOX_FAULTS))

    @property
    def decided(self) -> bool:
        return self.seen >= self.messages

    @property
    def rate(self) -> float:
        return self.failed / self.seen if self.seen else 0.0


class DeploymentHandle:
    """The pipeline's view of a deployment: `name`, `acl`, `process()`; versions swap under it."""

    def __init__(self, name: str, container: WasmContainer, acl: TopicACL, revision: int,
                 on_event: Callable[[str, str], None] | None = None):
        self.name = name
        self.acl = acl
        self.current = container
        self.revision = revision
        self.previous: WasmContainer | None = None
        self.previous_revision: int | None = None
        self._gate: Gate | None = None
        self._lock = threading.Lock()
        self._on_event = on_event or (lambda kind, msg: None)
        self.rollbacks = 0
        self.last_rollback_reason: str | None = None
        self.last_rolled_back_revision: int | None = None
        #: optional wrapper around each batch (tracing): trace(handle, messages, process)
        self.trace: Callable[["DeploymentHandle", Sequence[Message], Callable], BatchResult] | None = None
        #: how long its latest calls took (ms, a call handles one batch, waiting for a free
        #: instance included), across versions; `calls` counts them all, so a reader can tell
        #: which entries are new since it last looked
        self.call_latencies_ms: deque[float] = deque(maxlen=4096)
        self.calls = 0
        self._call_seq = itertools.count(1)   # next() is atomic: lanes call from several threads

    def process(self, messages: Sequence[Message]) -> BatchResult:
        t0 = time.perf_counter()
        trace = self.trace
        result = trace(self, messages, self._process) if trace is not None else self._process(messages)
        self.call_latencies_ms.append((time.perf_counter() - t0) * 1000)   # calls that ran only
        self.calls = next(self._call_seq)
        return result

    def _process(self, messages: Sequence[Message]) -> BatchResult:
        while True:
            container = self.current
            try:
                result = container.process(messages)
            except ContainerUnavailable:
                if container is not self.current:
                    continue  # swapped while we were on our way: use the new version
                raise
            if self._gate is not None and container is self.current:
                self._check_gate(container, result, len(messages))
            return result

    # -- updates ---------------------------------------------------------------------------
    def update(self, new: WasmContainer, revision: int, messages: int, max_trap_rate: float) -> None:
        """Swap traffic to `new` (already started) and watch its first messages."""
        with self._lock:
            old = self.previous
            if old is not None:  # an earlier update still under watch: it is superseded
                old.stop("superseded")
            self.previous, self.previous_revision = self.current, self.revision
            self._gate = Gate(messages, max_trap_rate)
            self.current, self.revision = new, revision
        self._on_event("updated", f"revision {revision} serving; health gate: first {messages} "
                                  f"messages, trap rate ≤ {max_trap_rate:.0%}")

    def _check_gate(self, container: WasmContainer, result: BatchResult, n: int) -> None:
        with self._lock:
            gate = self._gate
            if gate is None or container is not self.current:
                return
            gate.record(result, n)
            # fail as soon as the allowed number of failures is certainly exceeded
            doomed = gate.failed > gate.max_trap_rate * gate.messages
            if not gate.decided and not doomed:
                return
            failed = doomed or gate.rate > gate.max_trap_rate
            old, old_rev = self.previous, self.previous_revision
            self._gate = None
            self.previous = self.previous_revision = None
            if failed and old is not None:
                assert old_rev is not None  # update() sets the previous revision with the container
                bad_rev = self.revision
                self.current, self.revision = old, old_rev
                self.rollbacks += 1
                reason = (f"revision {bad_rev} failed its health gate: {gate.failed} of {gate.seen} "
                          f"messages trapped or hit limits ({gate.rate:.0%} > {gate.max_trap_rate:.0%})")
                self.last_rollback_reason = reason
                self.last_rolled_back_revision = bad_rev
                to_stop: WasmContainer | None = container
            else:
                reason = None
                to_stop = old
        if to_stop is not None:
            threading.Thread(target=to_stop.stop, args=("replaced",), daemon=True).start()
        if reason:
            log.warning("deployment %s rolled back: %s", self.name, reason)
            self._on_event("rolled-back", reason)
        else:
            self._on_event("healthy", f"revision {self.revision} passed its health gate "
                                      f"({gate.failed} of {gate.seen} failed)")

    @property
    def gate_pending(self) -> bool:
        return self._gate is not None

    def stop(self, reason: str = "deployment removed") -> None:
        """Stop every version; `reason` lands in the state history, so a node that stops
        says so instead of claiming the deployment was removed."""
        with self._lock:
            for c in (self.current, self.previous):
                if c is not None:
                    c.stop(reason)
