"""MQTT packets: encoders and an incremental decoder (OASIS MQTT 3.1.1 sections 2–3, and
MQTT 5.0 section 3 for the `*5` functions).

Only what a client sends and receives at QoS 0 and 1. Pure functions on bytes, no I/O, so the
wire format can be tested on its own and the bus stays about connection state. MQTT 5 packets
differ from 3.1.1 ones by a property block (`mqtt_props`) and reason codes; the 3.1.1
functions stay as they were, so a 3.1.1 bus pays nothing for 5.
"""

from __future__ import annotations

import struct

from ..message import Envelope
from . import mqtt_props as props
# re-exported: callers catch the codec's errors by the codec's name
from .mqtt_errors import PacketTooLarge as PacketTooLarge
from .mqtt_errors import ProtocolError as ProtocolError

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


def _length(n: int) -> bytes:
    if n > MAX_REMAINING:
        raise ValueError(f"MQTT packet of {n} bytes exceeds the protocol's limit")
    if n < 128:
        return bytes((n,))
    return props.varint(n)


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
        out: list[tuple[int, int, bytes]] = []
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


# ---------------------------------------------------------------------------- MQTT 5

EMPTY_PROPS = b"\x00"


def connect5(client_id: str, *, clean_start: bool, keepalive: int,
             username: str | None = None, password: str | None = None,
             will: tuple[str, bytes, int, bool] | None = None,
             properties: props.Properties | None = None,
             will_properties: props.Properties | None = None) -> bytes:
    """CONNECT at protocol level 5 (3.1): the 3.1.1 layout plus properties after the keep
    alive and, for a will, before its topic."""
    flags = 0x02 if clean_start else 0
    payload = _str(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += props.encode(will_properties) + _str(topic) + _str(message)
    if username is not None:
        flags |= 0x80
        payload += _str(username)
    if password is not None:
        flags |= 0x40
        payload += _str(password)
    body = (b"\x00\x04MQTT\x05" + bytes((flags,)) + _H.pack(keepalive)
            + props.encode(properties) + payload)
    return b"\x10" + _length(len(body)) + body


def parse_connack5(body: bytes) -> tuple[bool, int, props.Properties]:
    """(session present, reason code, properties) of an MQTT 5 CONNACK."""
    if len(body) < 2:
        raise ProtocolError("short CONNACK")
    code = props.check_reason("CONNACK", body[1])
    found = props.decode(body, 2)[0] if len(body) > 2 else {}
    return bool(body[0] & 1), code, found


def publish5(topic: bytes, payload: bytes, qos: int, retain: bool, mid: int = 0,
             properties: bytes = EMPTY_PROPS) -> bytes:
    """A PUBLISH at level 5; `properties` is an encoded block (`mqtt_props.encode`), so a
    caller sending many messages with none passes the one-byte empty block."""
    head = 0x30 | (qos << 1) | (1 if retain else 0)
    n = 2 + len(topic) + len(properties) + len(payload) + (2 if qos else 0)
    mid_b = _H.pack(mid) if qos else b""
    return b"".join((bytes((head,)), _length(n), _H.pack(len(topic)), topic, mid_b, properties,
                     payload))


def parse_publish5(flags: int, body: bytes) -> tuple[bytes, int, int, props.Properties, bytes]:
    """(topic bytes, qos, packet id, properties, payload) of an incoming level-5 PUBLISH."""
    topic, qos, mid, pos = _publish5_head(flags, body)
    found, pos = props.decode(body, pos)
    return topic, qos, mid, found, body[pos:]


def read_publish5(flags: int, body: bytes) -> tuple[bytes, int, int, Envelope | None, props.Properties, bytes]:
    """(topic bytes, qos, packet id, envelope, the connection's properties, payload): what
    the bus needs of a level-5 PUBLISH, with repeated property blocks decoded once
    (`mqtt_props.read_envelope`)."""
    topic, qos, mid, pos = _publish5_head(flags, body)
    env, own, pos = props.read_envelope(body, pos)
    return topic, qos, mid, env, own, body[pos:]


def _publish5_head(flags: int, body: bytes) -> tuple[bytes, int, int, int]:
    if len(body) < 2:
        raise ProtocolError("PUBLISH without a topic")
    tl = (body[0] << 8) | body[1]
    qos = (flags >> 1) & 3
    if qos == 3:
        raise ProtocolError("PUBLISH with QoS 3 (MQTT 5, 3.3.1.2: no such level)")
    pos = 2 + tl + (2 if qos else 0)
    if len(body) < pos + 1:
        raise ProtocolError("PUBLISH shorter than its topic, packet identifier and properties")
    mid = ((body[2 + tl] << 8) | body[3 + tl]) if qos else 0
    return body[2:2 + tl], qos, mid, pos


def puback5(mid: int, reason: int = 0) -> bytes:
    """PUBACK at level 5; success keeps the 3.1.1 form (3.4.2.1 allows leaving it out)."""
    if reason == 0:
        return b"\x40\x02" + _H.pack(mid)
    return b"\x40\x04" + _H.pack(mid) + bytes((reason,)) + EMPTY_PROPS


def parse_ack5(packet: str, body: bytes) -> tuple[int, int, props.Properties]:
    """(packet id, reason code, properties) of a level-5 PUBACK (or PUBREC, PUBCOMP)."""
    mid = packet_id(body)
    if len(body) == 2:
        return mid, 0, {}
    code = props.check_reason(packet, body[2])
    found = props.decode(body, 3)[0] if len(body) > 3 else {}
    return mid, code, found


def subscribe5(mid: int, filters: list[tuple[str, int]], properties: props.Properties | None = None) -> bytes:
    """SUBSCRIBE at level 5; each filter's byte holds its subscription options (3.8.3.1):
    maximum QoS in bits 0-1, No Local bit 2, Retain As Published bit 3, Retain Handling 4-5."""
    body = (_H.pack(mid) + props.encode(properties)
            + b"".join(_str(f) + bytes((o,)) for f, o in filters))
    return b"\x82" + _length(len(body)) + body


def parse_suback5(body: bytes, packet: str = "SUBACK") -> tuple[int, list[int], props.Properties]:
    """(packet id, reason code per filter, properties) of a level-5 SUBACK or UNSUBACK."""
    mid = packet_id(body)
    found, pos = props.decode(body, 2)
    return mid, [props.check_reason(packet, c) for c in body[pos:]], found


def unsubscribe5(mid: int, filters: list[str]) -> bytes:
    body = _H.pack(mid) + EMPTY_PROPS + b"".join(_str(f) for f in filters)
    return b"\xa2" + _length(len(body)) + body


def disconnect5(reason: int = 0, properties: props.Properties | None = None) -> bytes:
    if reason == 0 and not properties:
        return DISCONNECT_PACKET
    body = bytes((reason,)) + props.encode(properties)
    return b"\xe0" + _length(len(body)) + body


def parse_disconnect5(body: bytes) -> tuple[int, props.Properties]:
    """(reason code, properties) of a DISCONNECT the broker sent (level 5 only)."""
    if not body:
        return 0, {}
    code = props.check_reason("DISCONNECT", body[0])
    return code, (props.decode(body, 1)[0] if len(body) > 1 else {})
