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
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..messaging.topics import OrderKey

_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)(\*?)\}")

#: how many distinct topics (patterns) or value sets (templates) one remembers before it
#: starts over: devices repeat their topics, so a route's working set is its devices
MEMO_SIZE = 8192


@dataclass(frozen=True)
class TopicPattern:
    text: str
    filter: str                       # the MQTT filter to subscribe to
    names: tuple[tuple[int, str], ...]  # (segment index, name); index -1 = the '#' remainder
    rest_at: int | None
    #: topic -> its captures, for `capture` (not part of the pattern's identity)
    _memo: dict[str, dict[str, str]] = field(default_factory=dict, compare=False, repr=False)

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
        """The named segments of `topic` (a new dict each time: the caller may keep or change
        it). Every message of a route comes through here; a device repeats its topic, so the
        split is done once per topic."""
        if not self.names:
            return {}
        memo = self._memo
        hit = memo.get(topic)
        if hit is None:
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            hit = memo[topic] = self._split(topic)
        return hit.copy()

    def _split(self, topic: str) -> dict[str, str]:
        segs = topic.split("/")
        vals = {}
        for i, name in self.names:
            if i == -1:
                vals[name] = "/".join(segs[self.rest_at:]) if self.rest_at is not None else ""
            elif i < len(segs):
                vals[name] = segs[i]
        return vals


class TopicTemplate:
    """`alerts/{device}` → a topic, given variables. Unknown variables raise at fill time.

    A sink fills its template for every message it sends. Unless the template reads the
    payload, the topic depends only on the values of the variables it names, which repeat
    with the devices; filled topics (and missing values) are remembered by those values."""

    __slots__ = ("text", "_parts", "_needs_payload", "_names", "_memo")

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
        #: the variables the template names, in order, and what their values filled in
        #: (a topic, or the KeyError of a missing value)
        self._names = tuple(n for v, n in self._parts if v)
        self._memo: dict[tuple, str | KeyError] = {}

    @property
    def static(self) -> bool:
        return len(self._parts) == 1

    def fill(self, variables: dict[str, str], payload: bytes | None = None,
             topic: str | None = None) -> str:
        """The topic for these variables (and, for `{payload.…}`, this payload); `topic`, when
        given, is `{topic}` (the topic a module emitted), whatever `variables` hold."""
        if self.static:
            return self.text
        if self._needs_payload:
            return self._fill(variables if topic is None else {**variables, "topic": topic}, payload)
        key: tuple | None
        if topic is None:
            key = tuple([variables.get(n) for n in self._names])
        else:
            key = tuple([topic if n == "topic" else variables.get(n) for n in self._names])
        memo = self._memo
        try:
            hit = memo.get(key)
        except TypeError:   # a value that cannot be a key: filled every time
            hit, key = None, None
        if hit is None:
            try:
                hit = self._fill(variables if topic is None else {**variables, "topic": topic}, None)
            except KeyError as e:
                hit = e
            # only text is remembered: 1, 1.0 and True are one key but three topics
            if key is not None and all(v is None or type(v) is str for v in key):
                if len(memo) >= MEMO_SIZE:
                    memo.clear()
                memo[key] = hit
        if isinstance(hit, KeyError):
            raise KeyError(hit.args[0])
        return hit

    def _fill(self, variables: dict[str, str], payload: bytes | None) -> str:
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
