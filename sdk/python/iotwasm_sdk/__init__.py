"""iotwasm SDK for Python modules, built into WebAssembly components with componentize-py.

A module is a handler called once per message::

    from iotwasm_sdk import handler, reject, config

    LIMIT = 0.0

    @setup
    def start():                       # optional: once per instance, before any message
        global LIMIT
        LIMIT = config.number("max", 100.0)

    @handler
    def handle(msg):
        reading = msg.json()
        if reading["value"] > LIMIT:
            return None                # dropped: no output
        return msg                     # passed on unchanged, on the route's output topic

A handler returns what to emit (a `Message`, `str`, `bytes`, or a `dict`/`list` that is
written as JSON; `None` emits nothing) and may call `emit(payload, topic=...)` for more
outputs. `reject(reason)` — or any exception — sends the input to the dead-letter path with
the reason; the rest of the batch goes on.

Host services are reached only when the deployment grants their capability: `log`,
`config`, `kv`, `clock`, `random`, `metrics`. The build links the ones the project declares;
calling another raises `CapabilityError`.

The framing of batches (docs/abi.md, "Component ABI") is implemented in `_batch.py`; this
module is the author's surface.
"""

from __future__ import annotations

import json as _stdjson
from collections.abc import Callable
from typing import Any

from ._batch import CapabilityError, Message, Reject, emit, host, reject, state
from ._json import Malformed, format_number, is_object, members, parse_number

__all__ = [
    "CapabilityError", "Malformed", "Message", "Reject", "clock", "config", "emit",
    "format_number", "handler", "is_object", "kv", "log", "members", "metrics", "parse_number",
    "random", "reject", "setup",
]


def handler(fn: Callable[[Message], Any]) -> Callable[[Message], Any]:
    """Register the function called for every message (one per module)."""
    state.handler = fn
    return fn


def setup(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Register a function called once per instance before the first batch.

    Read config here (a host call per message costs more than most handlers); raising fails
    the instance, and the container does not start, with the exception's text.
    """
    state.setup = fn
    return fn


class _Log:
    """Lines for the container's log (capability `log`)."""

    def _write(self, level: int, message: str) -> None:
        mod = host("log")
        state.effects = True
        mod.write(mod.Level(level), str(message))

    def debug(self, message: str) -> None:
        self._write(0, message)

    def info(self, message: str) -> None:
        self._write(1, message)

    def warn(self, message: str) -> None:
        self._write(2, message)

    def error(self, message: str) -> None:
        self._write(3, message)


class _Config:
    """The deployment's read-only config (capability `config`)."""

    def get(self, key: str, default: str | None = None) -> str | None:
        value = host("config").get(key)
        return default if value is None else value

    def number(self, key: str, default: float) -> float:
        """A number from config (the C SDK's syntax, surrounding whitespace ignored); a value
        that is not a number raises ValueError naming it."""
        value = self.get(key)
        if value is None:
            return default
        number = parse_number(value.strip(" \t\n\r")) if len(value) <= 64 else None
        if number is None:
            raise ValueError(f"config {key}={value!r} is not a number")
        return number


class _KeyValue:
    """Per-container storage that survives instance restarts (capability `kv`)."""

    def get(self, key: str) -> str | None:
        return host("kv").get(key)

    def get_json(self, key: str, default: Any = None) -> Any:
        value = self.get(key)
        return default if value is None else _stdjson.loads(value)

    def set(self, key: str, value: str) -> bool:
        """Store a text value; False when the container's kv quota would be exceeded."""
        state.effects = True
        return host("kv").set(key, value)

    def set_json(self, key: str, value: Any) -> bool:
        return self.set(key, _stdjson.dumps(value, separators=(",", ":")))

    def delete(self, key: str) -> bool:
        state.effects = True
        return host("kv").delete(key)


class _Clock:
    """Wall clock (capability `clock`)."""

    def now_ms(self) -> int:
        return host("clock").now_ms()


class _Random:
    """Secure randomness from the host (capability `random`).

    Python's own `random` module inside a component is seeded when the component is built,
    so it repeats the same sequence in every instance: use this for anything that matters.
    """

    def u64(self) -> int:
        return host("random").next_u64()

    def random(self) -> float:
        """A float in [0, 1)."""
        return (self.u64() >> 11) / float(1 << 53)


class _Metrics:
    """Counters and gauges on the container's metrics (capability `metrics`)."""

    def counter(self, name: str, delta: float = 1.0) -> None:
        state.effects = True
        host("metrics").counter_add(name, float(delta))

    def gauge(self, name: str, value: float) -> None:
        state.effects = True
        host("metrics").gauge_set(name, float(value))


log = _Log()
config = _Config()
kv = _KeyValue()
clock = _Clock()
random = _Random()
metrics = _Metrics()
