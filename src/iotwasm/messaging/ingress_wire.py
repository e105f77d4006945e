"""The frames between an `Ingress` and its workers' `WorkerBus` (a local stream socket).

A frame is a 4-byte big-endian length, then a 1-byte kind and its body. Every frame is read
whole before it is decoded and none may exceed `MAX_FRAME` (a message as large as an MQTT
packet may be, plus its header), so a peer cannot make the other side buffer without bound.
Both sides are processes of one node, but the socket is a boundary all the same: a worker
proves itself with the token its parent gave it before it is sent anything.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any, Iterator

from ..errors import ConfigError
from ..message import Envelope

#: a frame's largest body: an MQTT packet of at most 256 MiB would not fit, but the node's
#: buses refuse messages over 16 MiB long before one reaches an ingress
MAX_FRAME = 17 * 1024 * 1024

HELLO, WELCOME, REFUSED, SUB, SUBOK, UNSUB, DETACH, DELIVER, SETTLE, READY, SUBFAILED = range(1, 12)

_LEN = struct.Struct(">I")
_HELLO = struct.Struct(">BHH")            # kind, worker, workers; then the token
_SUB = struct.Struct(">BIBhBH")           # kind, sid, qos, key level (-1: whole topic), rest, len(queue)
_SID = struct.Struct(">BI")               # SUBOK, UNSUB, DETACH
_DELIVER = struct.Struct(">BIQqHI")       # kind, sid, mid, timestamp ms, len(topic), len(envelope)
_SETTLED = struct.Struct(">QB")           # one of a SETTLE frame's (mid, outcome) pairs

#: outcomes as bytes on the wire (bus.OK … bus.RELEASED)
OUTCOMES = ("ok", "failed", "dropped", "released")


class Writer:
    """One side's way out: frames written during one turn of the loop leave in one send
    (a message and its settlement cost a system call per turn, not one each)."""

    __slots__ = ("transport", "_out")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._out: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._out:
            asyncio.get_running_loop().call_soon(self.flush)
        self._out.append(data)

    def flush(self) -> None:
        if self._out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._out))
        self._out.clear()


class Reader:
    """One side's way in: bytes as they arrive, taken apart into whole frames (what is left
    of an incomplete one waits for the next bytes)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[int, tuple[Any, ...]]]:
        """The (kind, fields) of each frame that `data` completes, in order. ConfigError, after
        which the link is of no use: from the call, on a frame over `MAX_FRAME` (known from
        its length: its body is never waited for); from the iteration, on a frame that does
        not decode (those before it have been taken)."""
        self._buf += data
        return map(decode, frames(self._buf))


def _frame(body: bytes) -> bytes:
    return _LEN.pack(len(body)) + body


def hello(worker: int, workers: int, token: bytes) -> bytes:
    return _frame(_HELLO.pack(HELLO, worker, workers) + token)


def welcome() -> bytes:
    return _frame(bytes([WELCOME]))


def ready() -> bytes:
    return _frame(bytes([READY]))


def refused(why: str) -> bytes:
    return _frame(bytes([REFUSED]) + why.encode()[:1000])


def sub(sid: int, topic_filter: str, qos: int, level: int | None, rest: bool, queue: str | None) -> bytes:
    q = (queue or "").encode()
    return _frame(_SUB.pack(SUB, sid, qos, -1 if level is None else level, rest, len(q)) + q
                  + topic_filter.encode())


def sid_frame(kind: int, sid: int) -> bytes:
    return _frame(_SID.pack(kind, sid))


def sub_failed(sid: int, why: str) -> bytes:
    return _frame(_SID.pack(SUBFAILED, sid) + why.encode()[:1000])


def deliver(sid: int, mid: int, topic: str, payload: bytes, timestamp_ms: int,
            envelope: Envelope | None) -> bytes:
    t = topic.encode()
    env = b"" if envelope is None else _envelope_json(envelope)
    head = _DELIVER.pack(DELIVER, sid, mid, timestamp_ms, len(t), len(env))
    return _LEN.pack(len(head) + len(t) + len(env) + len(payload)) + head + t + env + payload


def settled(mid: int, outcome: str) -> bytes:
    """One message's outcome, for `settle`."""
    return _SETTLED.pack(mid, OUTCOMES.index(outcome))


def settle(outcomes: bytes) -> bytes:
    """A frame of `settled` pairs: a worker reports what it settled in one turn at once."""
    return _frame(bytes([SETTLE]) + outcomes)


def _envelope_json(env: Envelope) -> bytes:
    return json.dumps({"h": env.headers, "ct": env.content_type, "rt": env.response_topic,
                       "cd": None if env.correlation_data is None else env.correlation_data.hex(),
                       "x": env.expiry_s, "u": env.utf8}).encode()


def _envelope(raw: bytes) -> Envelope:
    d = json.loads(raw)
    return Envelope(headers=tuple((str(k), str(v)) for k, v in d["h"]), content_type=d["ct"],
                    response_topic=d["rt"], correlation_data=None if d["cd"] is None else bytes.fromhex(d["cd"]),
                    expiry_s=d["x"], utf8=bool(d["u"]))


def frames(buf: bytearray) -> list[bytes]:
    """Take the whole frames from the front of `buf` (what is left is an incomplete one);
    raises ConfigError on a frame over `MAX_FRAME` or an empty one."""
    out = []
    pos, end = 0, len(buf)
    while end - pos >= 4:
        (n,) = _LEN.unpack_from(buf, pos)
        if n == 0 or n > MAX_FRAME:
            raise ConfigError(f"ingress link: a frame of {n} bytes (at most {MAX_FRAME})")
        if end - pos - 4 < n:
            break
        out.append(bytes(buf[pos + 4:pos + 4 + n]))
        pos += 4 + n
    del buf[:pos]
    return out


def decode(body: bytes) -> tuple[int, tuple[Any, ...]]:
    """(kind, fields) of one frame's body; ConfigError when it is malformed."""
    kind = body[0]
    try:
        if kind == HELLO:
            _, worker, workers = _HELLO.unpack_from(body)
            return kind, (worker, workers, body[_HELLO.size:])
        if kind in (WELCOME, READY):
            return kind, ()
        if kind == REFUSED:
            return kind, (body[1:].decode(errors="replace"),)
        if kind == SUB:
            _, sid, qos, level, rest, qlen = _SUB.unpack_from(body)
            at = _SUB.size
            queue = body[at:at + qlen].decode() or None
            return kind, (sid, body[at + qlen:].decode(), qos, None if level < 0 else level, bool(rest), queue)
        if kind in (SUBOK, UNSUB, DETACH):
            return kind, (_SID.unpack_from(body)[1],)
        if kind == SUBFAILED:
            return kind, (_SID.unpack_from(body)[1], body[_SID.size:].decode(errors="replace"))
        if kind == DELIVER:
            _, sid, mid, ts, tlen, elen = _DELIVER.unpack_from(body)
            at = _DELIVER.size
            topic = body[at:at + tlen].decode()
            env = _envelope(body[at + tlen:at + tlen + elen]) if elen else None
            return kind, (sid, mid, topic, body[at + tlen + elen:], ts, env)
        if kind == SETTLE:
            return kind, tuple((mid, OUTCOMES[o]) for mid, o in _SETTLED.iter_unpack(memoryview(body)[1:]))
    except (struct.error, UnicodeDecodeError, ValueError, KeyError, IndexError, TypeError) as e:
        raise ConfigError(f"ingress link: malformed frame of kind {kind}: {e}") from None
    raise ConfigError(f"ingress link: unknown frame kind {kind}")
