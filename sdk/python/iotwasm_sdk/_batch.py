"""The guest side of the component ABI: one call per batch, one string in, one string out.

Input records are separated by U+001E (RS), their fields by U+001F (US):
``<flag><timestamp_ms> US <topic> US <payload>`` with flag 0 (as is), 1 (payload base64),
2 (topic base64) or 3 (both). Output records: ``<index> US <kind> US <topic> US <payload>``
with kind m (message), b (message, payload base64), i (the input's payload unchanged) or
r (reject, payload = reason). The whole batch crosses the sandbox as a single string, which is
what keeps a Python guest within a few microseconds per message (a list of records costs a
host-side conversion per element).

This file runs inside the component; it is plain Python, so it is also tested on the host.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable
from typing import Any

RS = "\x1e"
US = "\x1f"
_SEPARATORS = (RS, US)


class Reject(Exception):
    """Raise to send the current input to the dead-letter path with `reason`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class CapabilityError(RuntimeError):
    """A host service was used that the module was not built with."""


class _State:
    __slots__ = ("effects", "handler", "host", "index", "msg", "out", "setup")

    def __init__(self) -> None:
        self.handler: Callable[[Message], Any] | None = None
        self.setup: Callable[[], Any] | None = None
        self.effects = False
        self.out: list[str] | None = None
        self.index = -1
        self.msg: Message | None = None
        self.host: dict[str, Any] = {}


state = _State()


def bind(**interfaces: Any) -> None:
    """Called by the generated entry module with the host interfaces the build linked."""
    state.host.update(interfaces)


def host(name: str) -> Any:
    try:
        return state.host[name]
    except KeyError:
        raise CapabilityError(f"capability {name!r} is not declared by this module: add it to "
                              f"the project's capabilities and rebuild") from None


class Message:
    """One input message. `payload` is `str` for text and `bytes` for binary payloads."""

    __slots__ = ("_head", "payload", "topic")

    def __init__(self, topic: str, payload: str | bytes, head: str = "0") -> None:
        self.topic = topic
        self.payload = payload
        self._head = head

    @property
    def timestamp_ms(self) -> int:
        """When the host received the message (Unix ms)."""
        return int(self._head[1:] or 0)

    @property
    def text(self) -> str:
        p = self.payload
        return p if isinstance(p, str) else p.decode("utf-8", "replace")

    @property
    def data(self) -> bytes:
        p = self.payload
        return p.encode() if isinstance(p, str) else p

    def json(self) -> Any:
        """The payload parsed as JSON (raises ValueError when it is not JSON)."""
        return json.loads(self.text)

    def __repr__(self) -> str:
        return f"Message(topic={self.topic!r}, payload={self.payload!r})"


def reject(reason: str) -> None:
    """Dead-letter the current input with `reason` (raises Reject)."""
    raise Reject(reason)


def emit(payload: Any, topic: str | None = None) -> None:
    """Emit one more output for the current input; `topic=None` is the route's default."""
    out, msg = state.out, state.msg
    if out is None or msg is None:
        raise RuntimeError("emit() called outside a message handler")
    out.append(encode_output(state.index, payload, topic, msg))


def _clean(text: str) -> str:
    return text.replace(RS, " ").replace(US, " ")


def encode_output(index: int, value: Any, topic: str | None, msg: Message | None) -> str:
    """One output record. The input's own payload (or the input itself) is sent back as a
    reference instead of a copy."""
    if topic is None:
        topic = ""
    elif RS in topic or US in topic:
        raise ValueError("output topic contains control characters U+001E/U+001F")
    if msg is not None and (value is msg or value is msg.payload):
        return f"{index}{US}i{US}{topic}{US}"
    if isinstance(value, Message):
        value = value.payload
    if isinstance(value, str):
        if RS in value or US in value:
            value = binascii.b2a_base64(value.encode(), newline=False).decode()
            return f"{index}{US}b{US}{topic}{US}{value}"
        return f"{index}{US}m{US}{topic}{US}{value}"
    if isinstance(value, (bytes, bytearray)):
        try:
            text = bytes(value).decode()
        except UnicodeDecodeError:
            text = None
        if text is None or RS in text or US in text:
            value = binascii.b2a_base64(value, newline=False).decode()
            return f"{index}{US}b{US}{topic}{US}{value}"
        return f"{index}{US}m{US}{topic}{US}{text}"
    # json.dumps escapes every control character, so the text cannot hold a separator
    return f"{index}{US}m{US}{topic}{US}{json.dumps(value, separators=(',', ':'))}"


def _decode(flag: str, topic: str, payload: str) -> tuple[str, str | bytes]:
    bits = int(flag)
    data: str | bytes = payload
    if bits & 1:
        raw = binascii.a2b_base64(payload)
        try:
            text = raw.decode()
            data = raw if (RS in text or US in text) else text
        except UnicodeDecodeError:
            data = raw
    if bits & 2:
        topic = binascii.a2b_base64(topic).decode("utf-8", "replace")
    return topic, data


def run_setup() -> str | None:
    """Run the module's setup; returns the problem as text, or None."""
    if state.handler is None:
        return "the module registers no handler (decorate a function with @handler)"
    if state.setup is None:
        return None
    try:
        state.setup()
    except Exception as e:  # the container reports this as its init failure
        return _clean(f"{type(e).__name__}: {e}")
    return None


def process(batch: str, commit: Callable[[int, str], None] | None = None) -> str:
    """Handle a batch; return the output records not committed during the call.

    `commit(done, records)` is called after an input that had lasting effects (log, kv
    writes, metrics), so a trap later in the batch does not make the host redo them.
    """
    if not batch:
        return ""
    handler = state.handler
    if handler is None:
        raise RuntimeError("no handler registered")
    out: list[str] = []
    state.out = out
    add = out.append
    st = state
    st.effects = False
    i = 0
    for rec in batch.split(RS):
        head, topic, payload = rec.split(US, 2)
        if head[0] != "0":
            topic, payload = _decode(head[0], topic, payload)
        msg = Message(topic, payload, head)
        st.index = i
        st.msg = msg
        try:
            value = handler(msg)
            if value is not None:
                if value is msg or value is payload:
                    add(f"{i}{US}i{US}{US}")
                else:
                    add(encode_output(i, value, None, msg))
        except Reject as e:
            add(f"{i}{US}r{US}{US}{_clean(str(e.reason))}")
        except MemoryError:
            raise  # fails the whole call: the host replaces the instance
        except Exception as e:  # a failing handler dead-letters its input, not the batch
            add(f"{i}{US}r{US}{US}{_clean(f'{type(e).__name__}: {e}')}")
        i += 1
        if st.effects and commit is not None:
            st.effects = False
            commit(i, RS.join(out))
            out.clear()
    st.msg = None
    st.out = None
    return RS.join(out)
