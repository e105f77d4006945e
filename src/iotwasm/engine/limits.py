"""Resource limits of a container, and the human units they are written in.

Limits are per container and apply to every instance of it: memory (bytes of linear memory),
fuel per call (instructions, deterministic), wall-clock timeout per call (epoch interruption),
wasm stack size, number of instances, and output bytes per batch.

Every call has a time limit. A timeout of `None` means "the runtime's maximum"
(`Runtime(max_timeout_ms=...)`, on a node `iotwasm up --max-timeout`); written limits that
would mean no limit at all ("0", "none", negative) are refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
}
_COUNT_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "b": 1000**3}
_TIME_UNITS = {"us": 0.001, "µs": 0.001, "ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "": 1}
_NUM = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Zµ]*)\s*$")


def _parse(text: str | int | float, units: Mapping[str, float], what: str) -> float:
    if isinstance(text, (int, float)):
        return float(text)
    m = _NUM.match(str(text))
    if not m or m.group(2).lower() not in units:
        raise ConfigError(f"cannot read {what} {text!r} (examples: {_example(what)})")
    return float(m.group(1)) * units[m.group(2).lower()]


def _example(what: str) -> str:
    return {"size": "16Mi, 512Ki, 1G", "count": "10M, 500k, 1000", "duration": "50ms, 2s, 5m, 12h, 30d"}[what]


def parse_size(text: str | int) -> int:
    """'16Mi' -> 16777216. Binary (Ki/Mi/Gi) and decimal (k/M/G) suffixes."""
    return int(_parse(text, _SIZE_UNITS, "size"))


def parse_count(text: str | int) -> int:
    """'10M' -> 10_000_000 (fuel budgets)."""
    return int(_parse(text, _COUNT_UNITS, "count"))


def parse_duration_ms(text: str | int | float) -> float:
    """'50ms' -> 50.0; units us, ms, s, m (minutes), h, d; bare numbers are milliseconds."""
    return _parse(text, _TIME_UNITS, "duration")


#: what people write when they mean "no time limit"; a call always has one
_NO_LIMIT = frozenset({"0", "none", "null", "off", "no", "false", "never", "unlimited", "infinite",
                       "infinity", "inf"})


def parse_timeout_ms(text: str | int | float) -> float:
    """A per-call time limit in milliseconds ('50ms' -> 50.0); refuses 0, negative values and
    words meaning "no limit", since a call without a limit can freeze its caller for ever."""
    word = str(text).strip().lower()
    if (isinstance(text, (int, float)) and not isinstance(text, bool) and text <= 0) or \
            word in _NO_LIMIT or word.startswith("-") or (
            _NUM.match(word) and parse_duration_ms(word) <= 0):
        raise ConfigError(f"timeout {text!r} is not a time limit; every call needs a positive one, "
                          f"such as 50ms or 2s")
    return parse_duration_ms(text)


def format_duration_ms(ms: float) -> str:
    """50.0 -> '50ms', 2000.0 -> '2s', 1500.0 -> '1.5s', 90000.0 -> '90s'."""
    return f"{ms / 1000:g}s" if ms >= 1000 else f"{ms:g}ms"


def format_size(n: int) -> str:
    for unit, scale in (("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return f"{n}B"


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-container resource limits. Fuel `None` means unmetered; timeout `None` means the
    runtime's maximum (there is always a time limit).

    Defaults are deliberately safe for untrusted code: 64 MiB of memory, one second of wall
    time per call, a 512 KiB wasm stack and 16 MiB of output per batch. Fuel is off by default
    because metering costs throughput; turn it on when you need deterministic CPU budgets.
    """

    memory: int = 64 * 1024**2
    fuel: int | None = None
    timeout_ms: float | None = 1000.0
    stack: int = 512 * 1024
    max_instances: int = 64
    max_output: int = 16 * 1024**2

    def __post_init__(self) -> None:
        if self.memory < 65536:
            raise ConfigError(f"memory limit {self.memory} is below one wasm page (64Ki)")
        if self.fuel is not None and self.fuel <= 0:
            raise ConfigError("fuel limit must be positive")
        if self.timeout_ms is not None and self.timeout_ms <= 0:
            raise ConfigError("timeout must be positive")
        if not 16 * 1024 <= self.stack <= 64 * 1024**2:
            raise ConfigError(f"stack {self.stack} must be between 16Ki and 64Mi")
        if self.max_instances < 1:
            raise ConfigError("max_instances must be at least 1")
        if self.max_output < 4096:
            raise ConfigError("max_output must be at least 4Ki")

    @classmethod
    def parse(cls, *, memory: str | int | None = None, fuel: str | int | None = None,
              timeout: str | float | None = None, stack: str | int | None = None,
              max_instances: int | None = None, max_output: str | int | None = None) -> "Limits":
        """Build limits from human strings such as memory='16Mi', fuel='10M', timeout='50ms'."""
        kw: dict[str, Any] = {}
        if memory is not None:
            kw["memory"] = parse_size(memory)
        if fuel is not None:
            kw["fuel"] = parse_count(fuel) or None
        if timeout is not None:
            kw["timeout_ms"] = parse_timeout_ms(timeout)
        if stack is not None:
            kw["stack"] = parse_size(stack)
        if max_instances is not None:
            kw["max_instances"] = int(max_instances)
        if max_output is not None:
            kw["max_output"] = parse_size(max_output)
        return cls(**kw)

    def describe(self) -> str:
        fuel = "unlimited" if self.fuel is None else f"{self.fuel:,}"
        timeout = "the maximum" if self.timeout_ms is None else f"{self.timeout_ms:g}ms"
        return (f"memory {format_size(self.memory)}, fuel {fuel}, timeout {timeout}, "
                f"stack {format_size(self.stack)}, instances {self.max_instances}")
