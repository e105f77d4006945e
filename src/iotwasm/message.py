"""Messages in and out of modules.

These are plain data shared by every layer: a sensor reading arrives as a `Message`, a module
turns it into zero or more `Output`s, and a message that could not be handled becomes a
`DeadLetter` carrying the error, so nothing disappears silently.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple

from .errors import IotwasmError


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Envelope:
    """What a message carries beside its payload, as MQTT 5 defines it (3.3.2.3).

    `headers` are MQTT 5 user properties: (name, value) pairs, in order, a name possibly
    repeated, kept exactly as they arrived. `expiry_s` is the message expiry interval left
    when the message arrived (the broker counts it down). `response_topic` and
    `correlation_data` make a request: the answer goes to that topic with the same
    correlation data. A message from a transport without these (MQTT 3.1.1, NATS core) has
    no envelope at all.
    """

    headers: tuple[tuple[str, str], ...] = ()
    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    expiry_s: int | None = None
    #: payload format indicator: True when the sender declared the payload UTF-8 text
    utf8: bool = False

    def header(self, name: str) -> str | None:
        """The first value of header `name`, or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(slots=True)
class Message:
    topic: str
    payload: bytes
    timestamp_ms: int = field(default_factory=now_ms)
    #: MQTT 5 properties of the message; None for transports that have none
    envelope: Envelope | None = None


class Output(NamedTuple):
    """One message a module emitted.

    `index` is the position, in the batch handed to the module, of the input that produced it.
    `topic` is None when the module left the choice to the route's default output topic.
    A tuple rather than a dataclass: thousands are built per batch on the hot path.
    """

    index: int  # type: ignore[assignment]  # the field shadows tuple.index(), by design
    topic: str | None
    payload: bytes


@dataclass(slots=True)
class DeadLetter:
    index: int
    message: Message
    error: IotwasmError

    @property
    def reason(self) -> str:
        return str(self.error)


@dataclass(slots=True)
class BatchResult:
    outputs: list[Output] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    fuel_used: int = 0

    def extend(self, other: "BatchResult") -> None:
        self.outputs.extend(other.outputs)
        self.dead_letters.extend(other.dead_letters)
        self.fuel_used += other.fuel_used
