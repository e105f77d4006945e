"""What a route is made of and keeps, declared once for `RouteRunner` and its halves.

Split from `route` (the runner: intake, lanes, batching, hand-over); `route` re-exports it.
Here: what a route needs of its steps, sinks and tracing (`Step`, `Sink`, `BatchTrace`), its
policies and counters, and the items its lanes carry with the way their sources hear that a
message is through (`settle`). The steps of a batch (`route_steps`) and its sinks
(`route_sinks`) are mixins of `RouteRunner`: the state lives on the runner (set in
`RouteRunner.__init__`), and `RouteState` names what they share so that each file
type-checks on its own; it adds nothing at run time.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol, Sequence, Union

from ..errors import IotwasmError
from ..message import BatchResult, DeadLetter, Message
from ..messaging.acl import TopicACL
from ..messaging.bus import Settlement
from ..supervise import Repeats, StorageHold


class Step(Protocol):
    """What a route needs of a deployment: a name, topic grants and a (blocking) batch call."""

    name: str
    acl: TopicACL

    def process(self, messages: Sequence[Message]) -> BatchResult: ...


class Sink(Protocol):
    """Where a route's results go. A sink may also offer ``submit(messages, variables)``:
    hand the batch on in order and return an awaitable of `deliver`'s result, so the lane
    can process its next batch while an uplink is still acknowledging this one."""

    name: str

    async def deliver(self, messages: list[Message], variables: list[dict[str, str]]
                      ) -> list[tuple[int, IotwasmError]]:
        """Take the messages; return the ones it could not take, with the reason."""
        ...


DeadLetterHandler = Callable[[str, str, DeadLetter, dict[str, str]], Awaitable[None]]


class BatchTrace(Protocol):
    """Spans of a route's batches (`api.tracing` makes them; the pipeline stays free of any
    tracing library). A batch's span is opened when its lane takes it and closed when its
    sinks confirmed it; its steps run inside it on the lane's thread (`enter`/`leave`), and
    each sink's hand-over and confirmation is a span of its own under it."""

    def batch(self, route: str, messages: int) -> object: ...
    def enter(self, span: object) -> object: ...
    def leave(self, token: object) -> None: ...
    def sink(self, span: object, sink: str, messages: int) -> object: ...
    def end_sink(self, span: object, failures: int) -> None: ...
    def end(self, span: object, delivered: int, dead: int) -> None: ...


@dataclass(frozen=True)
class BatchPolicy:
    max_size: int = 100
    max_linger_s: float = 0.002


@dataclass(frozen=True)
class QueuePolicy:
    capacity: int = 10_000
    overflow: str = "block"  # or "drop-oldest"


@dataclass
class RouteStats:
    received: int = 0
    dropped: int = 0
    processed: int = 0
    delivered: int = 0
    dead_letters: int = 0
    acl_denied: int = 0
    batches: int = 0
    step_retries: int = 0
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=10_000))
    #: dead letters by where they arose (a step's deployment, a sink, or "route"), and the
    #: (wall-clock time, error) of the latest there: what failed, counted per dead letter
    dead_by: Counter = field(default_factory=Counter)
    last_dead: dict = field(default_factory=dict)

    def percentile(self, q: float) -> float:
        data = sorted(self.latencies_ms)
        if not data:
            return 0.0
        return data[min(len(data) - 1, int(q * len(data)))]


@dataclass(slots=True)
class Flow:
    """A batch between steps: messages with their topic variables and arrival times."""

    msgs: list[Message]
    vars: list[dict[str, str]]
    arrived: list[float]


#: how a message's source hears that the route is through with it: a future, or a bus's
#: `Settlement` (the same calls, reported at once)
Settled = Union[asyncio.Future, Settlement]


@dataclass(slots=True)
class Item:
    msg: Message
    vars: dict[str, str]
    arrived: float
    settled: Settled | None = None
    start: int = 0     # the step it enters at: 0, or later for a replayed dead letter


def settle(items: list[Item], cancel: bool = False) -> None:
    """Tell each item's source it is done with (or, with `cancel`, given back unprocessed)."""
    for it in items:
        fut = it.settled
        if fut is not None and not fut.done():
            if cancel:
                fut.cancel()
            else:
                fut.set_result(True)


class RouteState:
    """Annotations of `RouteRunner`'s state that its halves share (see the module's doc)."""

    name: str
    steps: list[Step]
    stats: RouteStats
    storage: StorageHold
    _on_dead: DeadLetterHandler | None
    _faults: Repeats
    _acl_memo: dict
    _span_dead: dict[int, int]
