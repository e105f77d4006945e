"""MQTT 5 properties and reason codes (OASIS MQTT 5.0, sections 2.2.2 and 2.4).

Properties are a dict from property identifier to value; User Property, the one that may
repeat, is a list of (name, value) pairs in the order they were sent (MQTT 5 keeps both the
order and duplicate names, so a header that arrives twice arrives twice). Pure functions on
bytes, no I/O, as the rest of `mqtt_codec`.

Bounds: every length is checked against what is left of the property block before it is
read, a string or binary value longer than 65,535 bytes is refused when encoding, integers
outside their type's range too, and a property that is unknown, malformed, or given twice
where MQTT 5 allows it once is a `ProtocolError` when decoding. The decoder's packet limit
bounds the block as a whole.
"""

from __future__ import annotations

import struct
from typing import Any

from ..message import Envelope
from .mqtt_errors import ProtocolError

#: identifier -> value; the value's type depends on the identifier (`KINDS`): int, str,
#: bytes, or for User Property a list of (name, value) pairs
Properties = dict[int, Any]

PAYLOAD_FORMAT = 0x01
MESSAGE_EXPIRY = 0x02
CONTENT_TYPE = 0x03
RESPONSE_TOPIC = 0x08
CORRELATION_DATA = 0x09
SUBSCRIPTION_ID = 0x0B
SESSION_EXPIRY = 0x11
ASSIGNED_CLIENT_ID = 0x12
SERVER_KEEP_ALIVE = 0x13
AUTH_METHOD = 0x15
AUTH_DATA = 0x16
REQUEST_PROBLEM_INFO = 0x17
WILL_DELAY = 0x18
REQUEST_RESPONSE_INFO = 0x19
RESPONSE_INFO = 0x1A
SERVER_REFERENCE = 0x1C
REASON_STRING = 0x1F
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS_MAXIMUM = 0x22
TOPIC_ALIAS = 0x23
MAXIMUM_QOS = 0x24
RETAIN_AVAILABLE = 0x25
USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27
WILDCARD_SUB_AVAILABLE = 0x28
SUB_ID_AVAILABLE = 0x29
SHARED_SUB_AVAILABLE = 0x2A

BYTE, U16, U32, VARINT, STRING, BINARY, PAIR = "byte", "u16", "u32", "varint", "str", "bin", "pair"

#: identifier -> (name, type)
KINDS: dict[int, tuple[str, str]] = {
    PAYLOAD_FORMAT: ("payload format indicator", BYTE),
    MESSAGE_EXPIRY: ("message expiry interval", U32),
    CONTENT_TYPE: ("content type", STRING),
    RESPONSE_TOPIC: ("response topic", STRING),
    CORRELATION_DATA: ("correlation data", BINARY),
    SUBSCRIPTION_ID: ("subscription identifier", VARINT),
    SESSION_EXPIRY: ("session expiry interval", U32),
    ASSIGNED_CLIENT_ID: ("assigned client identifier", STRING),
    SERVER_KEEP_ALIVE: ("server keep alive", U16),
    AUTH_METHOD: ("authentication method", STRING),
    AUTH_DATA: ("authentication data", BINARY),
    REQUEST_PROBLEM_INFO: ("request problem information", BYTE),
    WILL_DELAY: ("will delay interval", U32),
    REQUEST_RESPONSE_INFO: ("request response information", BYTE),
    RESPONSE_INFO: ("response information", STRING),
    SERVER_REFERENCE: ("server reference", STRING),
    REASON_STRING: ("reason string", STRING),
    RECEIVE_MAXIMUM: ("receive maximum", U16),
    TOPIC_ALIAS_MAXIMUM: ("topic alias maximum", U16),
    TOPIC_ALIAS: ("topic alias", U16),
    MAXIMUM_QOS: ("maximum qos", BYTE),
    RETAIN_AVAILABLE: ("retain available", BYTE),
    USER_PROPERTY: ("user property", PAIR),
    MAXIMUM_PACKET_SIZE: ("maximum packet size", U32),
    WILDCARD_SUB_AVAILABLE: ("wildcard subscription available", BYTE),
    SUB_ID_AVAILABLE: ("subscription identifier available", BYTE),
    SHARED_SUB_AVAILABLE: ("shared subscription available", BYTE),
}

#: reason codes (2.4) and what they mean, for error messages
REASONS: dict[int, str] = {
    0x00: "success", 0x01: "granted QoS 1", 0x02: "granted QoS 2",
    0x04: "disconnect with will message", 0x10: "no matching subscribers",
    0x11: "no subscription existed", 0x18: "continue authentication", 0x19: "re-authenticate",
    0x80: "unspecified error", 0x81: "malformed packet", 0x82: "protocol error",
    0x83: "implementation specific error", 0x84: "unsupported protocol version",
    0x85: "client identifier not valid", 0x86: "bad user name or password",
    0x87: "not authorized", 0x88: "server unavailable", 0x89: "server busy", 0x8A: "banned",
    0x8B: "server shutting down", 0x8C: "bad authentication method",
    0x8D: "keep alive timeout", 0x8E: "session taken over", 0x8F: "topic filter invalid",
    0x90: "topic name invalid", 0x91: "packet identifier in use",
    0x92: "packet identifier not found", 0x93: "receive maximum exceeded",
    0x94: "topic alias invalid", 0x95: "packet too large", 0x96: "message rate too high",
    0x97: "quota exceeded", 0x98: "administrative action", 0x99: "payload format invalid",
    0x9A: "retain not supported", 0x9B: "QoS not supported", 0x9C: "use another server",
    0x9D: "server moved", 0x9E: "shared subscriptions not supported",
    0x9F: "connection rate exceeded", 0xA0: "maximum connect time",
    0xA1: "subscription identifiers not supported",
    0xA2: "wildcard subscriptions not supported",
}

#: the reason codes each packet a client receives may carry (3.2.2.2, 3.4.2.1, 3.9.3, 3.14.2.1)
VALID_REASONS: dict[str, frozenset[int]] = {
    "CONNACK": frozenset({0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
                          0x8A, 0x8C, 0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F}),
    "PUBACK": frozenset({0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99}),
    "SUBACK": frozenset({0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1,
                         0xA2}),
    "UNSUBACK": frozenset({0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91}),
    "DISCONNECT": frozenset({0x00, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F,
                             0x90, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x9A, 0x9B, 0x9C, 0x9D,
                             0x9E, 0x9F, 0xA0, 0xA1, 0xA2}),
}

_LIMITS = {BYTE: 0xFF, U16: 0xFFFF, U32: 0xFFFF_FFFF, VARINT: 268_435_455}
_H = struct.Struct(">H")
_I = struct.Struct(">I")


def reason_text(code: int) -> str:
    """``'not authorized (0x87)'``: a reason code as a person reads it."""
    return f"{REASONS.get(code, 'unknown reason')} (0x{code:02X})"


def check_reason(packet: str, code: int) -> int:
    """`code` if MQTT 5 defines it for `packet`, else `ProtocolError`."""
    if code not in VALID_REASONS[packet]:
        raise ProtocolError(f"{packet} with reason code 0x{code:02X}, which MQTT 5 does not "
                            "define for it")
    return code


def varint(n: int) -> bytes:
    if not 0 <= n <= 268_435_455:
        raise ValueError(f"{n} does not fit an MQTT variable byte integer")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """(value, position after it); at most 4 bytes, never past `end`."""
    value, shift = 0, 0
    while True:
        if pos >= end:
            raise ProtocolError("variable byte integer runs past the end of the packet")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise ProtocolError("variable byte integer longer than 4 bytes")


def _blob(name: str, value: str | bytes) -> bytes:
    b = value.encode() if isinstance(value, str) else bytes(value)
    if len(b) > 0xFFFF:
        raise ValueError(f"MQTT 5 {name} of {len(b):,} bytes exceeds the limit of 65,535 bytes")
    return _H.pack(len(b)) + b


def encode(props: dict[int, Any] | None) -> bytes:
    """The property block: its length (variable byte integer), then each property."""
    if not props:
        return b"\x00"
    out = bytearray()
    for pid, value in props.items():
        if pid not in KINDS:
            raise ValueError(f"unknown MQTT 5 property 0x{pid:02X}")
        name, kind = KINDS[pid]
        if kind == PAIR:
            for key, val in value:
                out.append(pid)
                out += _blob(f"{name} name", key) + _blob(f"{name} value", val)
            continue
        out.append(pid)
        if kind in (STRING, BINARY):
            if kind == STRING and not isinstance(value, str):
                raise ValueError(f"MQTT 5 {name} must be text, not {type(value).__name__}")
            out += _blob(name, value)
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _LIMITS[kind]:
            raise ValueError(f"MQTT 5 {name} must be a whole number from 0 to {_LIMITS[kind]}, "
                             f"not {value!r}")
        if kind == BYTE:
            out.append(value)
        elif kind == U16:
            out += _H.pack(value)
        elif kind == U32:
            out += _I.pack(value)
        else:
            out += varint(value)
    return varint(len(out)) + bytes(out)


def _read_blob(data: bytes, pos: int, end: int, name: str) -> tuple[bytes, int]:
    if end - pos < 2:
        raise ProtocolError(f"MQTT 5 {name} runs past the end of its properties")
    n = (data[pos] << 8) | data[pos + 1]
    pos += 2
    if end - pos < n:
        raise ProtocolError(f"MQTT 5 {name} of {n} bytes runs past the end of its properties")
    return bytes(data[pos:pos + n]), pos + n


def _text(raw: bytes, name: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise ProtocolError(f"MQTT 5 {name} is not UTF-8") from None


def decode(data: bytes, pos: int, end: int | None = None) -> tuple[dict[int, Any], int]:
    """Read a property block starting at `pos`: (properties, position after the block).

    `end` bounds the read (default: the end of `data`); the block's announced length must
    fit inside it."""
    end = len(data) if end is None else end
    length, pos = read_varint(data, pos, end)
    stop = pos + length
    if stop > end:
        raise ProtocolError(f"MQTT 5 properties of {length} bytes run past the end of the packet")
    props: dict[int, Any] = {}
    while pos < stop:
        pid = data[pos]
        pos += 1
        kind_name = KINDS.get(pid)
        if kind_name is None:
            raise ProtocolError(f"unknown MQTT 5 property 0x{pid:02X}")
        name, kind = kind_name
        if kind == PAIR:
            key, pos = _read_blob(data, pos, stop, f"{name} name")
            val, pos = _read_blob(data, pos, stop, f"{name} value")
            props.setdefault(pid, []).append((_text(key, name), _text(val, name)))
            continue
        if pid in props and pid != SUBSCRIPTION_ID:
            raise ProtocolError(f"MQTT 5 {name} given twice")
        if kind in (STRING, BINARY):
            raw, pos = _read_blob(data, pos, stop, name)
            value: Any = _text(raw, name) if kind == STRING else raw
        elif kind == VARINT:
            value, pos = read_varint(data, pos, stop)
        else:
            size = {BYTE: 1, U16: 2, U32: 4}[kind]
            if stop - pos < size:
                raise ProtocolError(f"MQTT 5 {name} runs past the end of its properties")
            value = int.from_bytes(data[pos:pos + size], "big")
            pos += size
        props[pid] = value
    return props, stop


def with_alias(block: bytes, alias: int) -> bytes:
    """`block` (an encoded property block) with a Topic Alias property added in front."""
    if block == b"\x00":
        return b"\x03\x23" + _H.pack(alias)
    length, start = read_varint(block, 0, len(block))
    return varint(length + 3) + b"\x23" + _H.pack(alias) + block[start:]


# ---------------------------------------------------------------------------- envelopes

#: devices repeat their headers: an envelope's block, and a block's envelope, are memoised
#: (both are immutable), bounded by clearing when full
_CACHE_LIMIT = 4096
_blocks: dict[Envelope, bytes] = {}
_envelopes: dict[bytes, Envelope | None] = {}


def envelope_block(env: Envelope) -> bytes:
    """The encoded PUBLISH property block that carries `env` (ValueError past a bound)."""
    block = _blocks.get(env)
    if block is None:
        block = encode(envelope_properties(env))
        if len(_blocks) >= _CACHE_LIMIT:
            _blocks.clear()
        _blocks[env] = block
    return block


def envelope_properties(env: Envelope) -> dict[int, Any]:
    """The PUBLISH properties that carry `env`."""
    found: dict[int, Any] = {}
    if env.utf8:
        found[PAYLOAD_FORMAT] = 1
    if env.expiry_s is not None:
        found[MESSAGE_EXPIRY] = env.expiry_s
    if env.content_type is not None:
        found[CONTENT_TYPE] = env.content_type
    if env.response_topic is not None:
        found[RESPONSE_TOPIC] = env.response_topic
    if env.correlation_data is not None:
        found[CORRELATION_DATA] = env.correlation_data
    if env.headers:
        found[USER_PROPERTY] = list(env.headers)
    return found


def read_envelope(data: bytes, pos: int, end: int | None = None) -> tuple[Envelope | None, dict[int, Any], int]:
    """Decode the property block of an incoming PUBLISH at `pos`: (its envelope, the
    properties that are the connection's rather than the message's, position after it).
    A block seen before is not decoded again unless it holds a topic alias or
    subscription identifier (which the caller must see)."""
    end = len(data) if end is None else end
    if data[pos] == 0:  # no properties: the common case on a busy bus
        return None, {}, pos + 1
    length, start = read_varint(data, pos, end)
    stop = start + length
    block = bytes(data[pos:stop]) if stop <= end else b""
    hit = _envelopes.get(block, _MISSING) if block else _MISSING
    if hit is not _MISSING:
        return hit, {}, stop  # type: ignore[return-value]
    found, stop = decode(data, pos, end)
    own = {k: found.pop(k) for k in (TOPIC_ALIAS, SUBSCRIPTION_ID) if k in found}
    env = envelope_of(found)
    if not own:
        if len(_envelopes) >= _CACHE_LIMIT:
            _envelopes.clear()
        _envelopes[block] = env
    return env, own, stop


_MISSING = object()


def envelope_of(found: dict[int, Any]) -> Envelope | None:
    """The envelope of an incoming PUBLISH's properties; None when it has none of them
    (subscription identifiers and topic aliases are the connection's, not the message's)."""
    if not found:
        return None
    env = Envelope(
        headers=tuple(found.get(USER_PROPERTY, ())),
        content_type=found.get(CONTENT_TYPE),
        response_topic=found.get(RESPONSE_TOPIC),
        correlation_data=found.get(CORRELATION_DATA),
        expiry_s=found.get(MESSAGE_EXPIRY),
        utf8=found.get(PAYLOAD_FORMAT) == 1,
    )
    return None if env == _NO_ENVELOPE else env


_NO_ENVELOPE = Envelope()
