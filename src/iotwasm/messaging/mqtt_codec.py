"""MQTT 3.1.1 packets: encoders and an incremental decoder (OASIS MQTT 3.1.1, section 2–3).

Only what a client sends and receives at QoS 0 and 1. Pure functions on bytes, no I/O, so the
wire format can be tested on its own and the bus stays about connection state.
"""

from __future__ import annotations

import struct

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
PUBREC, PUBREL, PUBCOMP = 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"
MAX_REMAINING = 268_435_455

#: CONNACK return codes (3.2.2.3)
CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}

_H = struct.Struct(">H")


#: the largest packet a `Decoder` takes unless told otherwise (fixed header included)
DEFAULT_MAX_PACKET = 16 * 1024 * 1024


class ProtocolError(Exception):
    """The peer sent bytes that are not MQTT 3.1.1.

    Raised by `Decoder.feed`, it carries in `packets` the packets that came complete before
    the offending bytes (a CONNACK, say), so the caller can still act on them."""

    packets: list = []


class PacketTooLarge(ProtocolError):
    """The peer announced a packet larger than the decoder's limit."""

    def __init__(self, size: int, limit: int):
        super().__init__(f"MQTT packet of {size:,} bytes exceeds the limit of {limit:,} bytes")
        self.size = size
        self.limit = limit


def _length(n: int) -> bytes:
    if n > MAX_REMAINING:
        raise ValueError(f"MQTT packet of {n} bytes exceeds the protocol's limit")
    if n < 128:
        return bytes((n,))
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    if len(b) > 0xFFFF:
        raise ValueError("MQTT string longer than 65535 bytes")
    return _H.pack(len(b)) + b


def connect(client_id: str, *, clean_session: bool, keepalive: int,
            username: str | None = None, password: str | None = None,
            will: tuple[str, bytes, int, bool] | None = None) -> bytes:
    flags = 0x02 if clean_session else 0
    payload = _str(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += _str(topic) + _str(message)
    if username is not None:
        flags |= 0x80
        payload += _str(username)
        if password is not None:
            flags |= 0x40
            payload += _str(password)
    body = b"\x00\x04MQTT\x04" + bytes((flags,)) + _H.pack(keepalive) + payload
    return b"\x10" + _length(len(body)) + body


def publish(topic: bytes, payload: bytes, qos: int, retain: bool, mid: int = 0) -> bytes:
    """A PUBLISH; `topic` already UTF-8 encoded (callers memoise it)."""
    head = 0x30 | (qos << 1) | (1 if retain else 0)
    n = 2 + len(topic) + len(payload) + (2 if qos else 0)
    if qos:
        return b"".join((bytes((head,)), _length(n), _H.pack(len(topic)), topic, _H.pack(mid), payload))
    return b"".join((bytes((head,)), _length(n), _H.pack(len(topic)), topic, payload))


def with_dup(packet: bytes) -> bytes:
    """The same PUBLISH marked as a retransmission (DUP flag, 3.3.1.1)."""
    return bytes((packet[0] | 0x08,)) + packet[1:]


def puback(mid: int) -> bytes:
    return b"\x40\x02" + _H.pack(mid)


def subscribe(mid: int, filters: list[tuple[str, int]]) -> bytes:
    body = _H.pack(mid) + b"".join(_str(f) + bytes((q,)) for f, q in filters)
    return b"\x82" + _length(len(body)) + body


def unsubscribe(mid: int, filters: list[str]) -> bytes:
    body = _H.pack(mid) + b"".join(_str(f) for f in filters)
    return b"\xa2" + _length(len(body)) + body


class Decoder:
    """Splits a byte stream into packets: ``feed(data)`` returns ``[(type, flags, body)]``.

    A partial packet waits for the next chunk; once its length is known, further chunks are
    only appended until it is complete (a large payload arriving in many reads is copied once,
    not once per read). Bodies are `bytes` slices of what arrived, so a PUBLISH's payload
    costs one copy.

    A packet larger than `max_packet_size` bytes (fixed header included) raises
    `PacketTooLarge` as soon as its length is read, before any of it is buffered: the peer
    decides how much it sends, the decoder how much it keeps.
    """

    __slots__ = ("_buf", "_need", "max_packet_size")

    def __init__(self, max_packet_size: int = DEFAULT_MAX_PACKET) -> None:
        if max_packet_size < 2:
            raise ValueError(f"max_packet_size {max_packet_size} is smaller than any MQTT packet")
        self._buf = bytearray()
        self._need = 0  # bytes the partial packet in _buf needs in all (0: not yet known)
        self.max_packet_size = max_packet_size

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:
                return []
            data = bytes(self._buf)
            self._buf = bytearray()
            self._need = 0
        out = []
        pos, end = 0, len(data)
        while end - pos >= 2:
            first = data[pos]
            i = pos + 1
            n = data[i]
            i += 1
            if n & 0x80:
                n &= 0x7F
                shift = 7
                while True:
                    if i >= end:
                        self._buf = bytearray(data[pos:])
                        return out
                    b = data[i]
                    i += 1
                    n |= (b & 0x7F) << shift
                    if not b & 0x80:
                        break
                    shift += 7
                    if shift > 21:
                        exc = ProtocolError("remaining length longer than 4 bytes")
                        exc.packets = out
                        raise exc
            stop = i + n
            if stop - pos > self.max_packet_size:
                self._buf = bytearray()
                exc = PacketTooLarge(stop - pos, self.max_packet_size)
                exc.packets = out
                raise exc
            if stop > end:
                self._buf = bytearray(data[pos:])
                self._need = stop - pos
                return out
            out.append((first >> 4, first & 0x0F, data[i:stop]))
            pos = stop
        if pos < end:
            self._buf = bytearray(data[pos:])
        return out


def parse_publish(flags: int, body: bytes) -> tuple[bytes, int, int, bytes]:
    """(topic bytes, qos, packet id, payload) of an incoming PUBLISH body."""
    if len(body) < 2:
        raise ProtocolError("PUBLISH without a topic")
    tl = (body[0] << 8) | body[1]
    qos = (flags >> 1) & 3
    if qos:
        if qos == 3:
            raise ProtocolError("PUBLISH with QoS 3 (MQTT 3.1.1, 3.3.1.2: no such level)")
        if len(body) < 4 + tl:
            raise ProtocolError("PUBLISH shorter than its topic and packet identifier")
        mid = (body[2 + tl] << 8) | body[3 + tl]
        return body[2:2 + tl], qos, mid, body[4 + tl:]
    if len(body) < 2 + tl:
        raise ProtocolError("PUBLISH shorter than its topic")
    return body[2:2 + tl], 0, 0, body[2 + tl:]


def packet_id(body: bytes) -> int:
    if len(body) < 2:
        raise ProtocolError("packet without its packet identifier")
    return (body[0] << 8) | body[1]
