"""Topic patterns with named segments, and topic templates filled from them.

A source topic pattern may name its wildcard segments: ``devices/{device}/frame`` subscribes to
``devices/+/frame`` and captures ``device``; ``{rest*}`` at the end is a ``#``. Sink and
dead-letter topics are templates such as ``alerts/{device}`` filled from those captures, from
``{route}``, ``{deployment}``, ``{topic}`` (the topic a module emitted) and from top-level
JSON payload fields (``{payload.sensor}``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..errors import ConfigError
from ..messaging.topics import OrderKey

_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)(\*?)\}")


@dataclass(frozen=True)
class TopicPattern:
    text: str
    filter: str                       # the MQTT filter to subscribe to
    names: tuple[tuple[int, str], ...]  # (segment index, name); index -1 = the '#' remainder
    rest_at: int | None

    @classmethod
    def parse(cls, text: str) -> "TopicPattern":
        segs = text.split("/")
        out, names, rest_at = [], [], None
        for i, seg in enumerate(segs):
            m = _VAR.fullmatch(seg)
            if m:
                if m.group(2):
                    if i != len(segs) - 1:
                        raise ConfigError(f"topic pattern {text!r}: {{{m.group(1)}*}} must be last")
                    out.append("#")
                    rest_at = i
                    names.append((-1, m.group(1)))
                else:
                    out.append("+")
                    names.append((i, m.group(1)))
            elif "{" in seg or "}" in seg:
                raise ConfigError(f"topic pattern {text!r}: segment {seg!r} mixes text and a variable")
            else:
                out.append(seg)
        return cls(text, "/".join(out), tuple(names), rest_at)

    def order_key(self, name: str) -> OrderKey:
        """Which part of a matching topic the variable `name` is (the whole topic when the
        pattern has no such variable: a route's lanes then key by topic)."""
        for i, var in self.names:
            if var == name:
                return OrderKey(self.rest_at, rest=True) if i == -1 else OrderKey(i)
        return OrderKey()

    def capture(self, topic: str) -> dict[str, str]:
        if not self.names:
            return {}
        segs = topic.split("/")
        vals = {}
        for i, name in self.names:
            if i == -1:
                vals[name] = "/".join(segs[self.rest_at:]) if self.rest_at is not None else ""
            elif i < len(segs):
                vals[name] = segs[i]
        return vals


class TopicTemplate:
    """`alerts/{device}` → a topic, given variables. Unknown variables raise at fill time."""

    __slots__ = ("text", "_parts", "_needs_payload")

    def __init__(self, text: str):
        self.text = text
        self._parts: list[tuple[bool, str]] = []
        pos = 0
        for m in _VAR.finditer(text):
            if m.group(2):
                raise ConfigError(f"topic template {text!r}: '*' belongs in source patterns only")
            self._parts.append((False, text[pos:m.start()]))
            self._parts.append((True, m.group(1)))
            pos = m.end()
        self._parts.append((False, text[pos:]))
        self._needs_payload = any(v and n.startswith("payload.") for v, n in self._parts)

    @property
    def static(self) -> bool:
        return len(self._parts) == 1

    def fill(self, variables: dict[str, str], payload: bytes | None = None) -> str:
        if self.static:
            return self.text
        fields: dict = {}
        if self._needs_payload and payload is not None:
            try:
                obj = json.loads(payload)
                fields = obj if isinstance(obj, dict) else {}
            except ValueError:
                fields = {}
        out = []
        for is_var, s in self._parts:
            if not is_var:
                out.append(s)
                continue
            if s.startswith("payload."):
                v = fields.get(s[8:])
            else:
                v = variables.get(s)
            if v is None or v == "":
                raise KeyError(f"topic template {self.text!r}: no value for {{{s}}}")
            v = str(v).replace("+", "_").replace("#", "_")
            # a variable fills one topic level, except {topic}, which is a whole topic
            out.append(v if s == "topic" else v.replace("/", "_"))
        return "".join(out)
