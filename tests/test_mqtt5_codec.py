"""The MQTT 5 wire format: properties round-trip for any values MQTT 5 allows, the byte
layouts of the spec, and the bounds (oversized, truncated, unknown, repeated, bad reason)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotwasm.message import Envelope
from iotwasm.messaging import mqtt_codec as codec
from iotwasm.messaging import mqtt_props as P
from iotwasm.messaging.mqtt_errors import ProtocolError

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_values = {
    P.BYTE: st.integers(0, 0xFF), P.U16: st.integers(0, 0xFFFF),
    P.U32: st.integers(0, 0xFFFF_FFFF), P.VARINT: st.integers(0, 268_435_455),
    P.STRING: text, P.BINARY: st.binary(max_size=60),
    P.PAIR: st.lists(st.tuples(text, text), min_size=1, max_size=6),
}
properties = st.dictionaries(st.sampled_from(sorted(P.KINDS)), st.none(), max_size=12).flatmap(
    lambda keys: st.fixed_dictionaries({k: _values[P.KINDS[k][1]] for k in keys}))


@given(properties)
@settings(max_examples=300, deadline=None)
def test_properties_round_trip(props):
    block = P.encode(props)
    decoded, end = P.decode(block + b"tail", 0)
    assert decoded == props
    assert end == len(block)


@given(properties, st.binary(max_size=200), st.sampled_from([0, 1]), st.integers(1, 65535),
       st.booleans())
@settings(max_examples=200, deadline=None)
def test_publish5_round_trips_through_the_decoder(props, payload, qos, mid, retain):
    p = codec.publish5(b"a/b", payload, qos, retain, mid if qos else 0, P.encode(props))
    [(ptype, flags, body)] = codec.Decoder().feed(p)
    assert ptype == codec.PUBLISH and bool(flags & 1) == retain
    assert codec.parse_publish5(flags, body) == (b"a/b", qos, mid if qos else 0, props, payload)


def test_user_properties_keep_order_and_repeats():
    pairs = [("b", "2"), ("a", "1"), ("b", "3"), ("", "")]
    assert P.decode(P.encode({P.USER_PROPERTY: pairs}), 0)[0] == {P.USER_PROPERTY: pairs}


def test_connect5_layout():
    p = codec.connect5("c", clean_start=True, keepalive=10,
                       properties={P.SESSION_EXPIRY: 60, P.RECEIVE_MAXIMUM: 20})
    body = p[2:]
    assert p[0] == 0x10 and p[1] == len(body)
    # protocol name, level 5, clean start, keep alive, properties (length 8), client id
    assert body == (b"\x00\x04MQTT\x05\x02\x00\x0a"
                    b"\x08\x11\x00\x00\x00\x3c\x21\x00\x14" b"\x00\x01c")


def test_acks_short_and_long_forms():
    assert codec.parse_ack5("PUBACK", b"\x00\x07") == (7, 0, {})
    assert codec.parse_ack5("PUBACK", b"\x00\x07\x10") == (7, 0x10, {})
    long = b"\x00\x07\x87" + P.encode({P.REASON_STRING: "no"})
    assert codec.parse_ack5("PUBACK", long) == (7, 0x87, {P.REASON_STRING: "no"})
    assert codec.puback5(7) == b"\x40\x02\x00\x07"
    assert codec.parse_suback5(b"\x00\x09\x00\x01\x87") == (9, [1, 0x87], {})
    assert codec.parse_connack5(b"\x01\x00\x03\x21\x00\x05") == (True, 0, {P.RECEIVE_MAXIMUM: 5})
    assert codec.parse_disconnect5(b"\x8e\x00") == (0x8E, {})
    assert codec.disconnect5() == codec.DISCONNECT_PACKET


@pytest.mark.parametrize("packet, body", [
    ("PUBACK", b"\x00\x07\x05"),            # 0x05 is no reason code at all
    ("PUBACK", b"\x00\x07\x8e"),            # session taken over: a DISCONNECT reason, not PUBACK's
    ("SUBACK", b"\x00\x09\x00\x03"),        # "granted QoS 3"
    ("CONNACK", b"\x00\x10\x00"),
    ("DISCONNECT", b"\x01\x00"),
])
def test_a_reason_code_mqtt5_does_not_define_for_the_packet_is_a_protocol_error(packet, body):
    parse = {"PUBACK": lambda b: codec.parse_ack5("PUBACK", b), "SUBACK": codec.parse_suback5,
             "CONNACK": codec.parse_connack5, "DISCONNECT": codec.parse_disconnect5}[packet]
    with pytest.raises(ProtocolError, match=rf"{packet} with reason code 0x[0-9A-F]{{2}}, which MQTT 5 does not define"):
        parse(body)


def test_oversized_property_is_refused_when_encoding():
    with pytest.raises(ValueError, match="user property value of 70,000 bytes exceeds the limit of 65,535"):
        P.encode({P.USER_PROPERTY: [("k", "v" * 70_000)]})
    with pytest.raises(ValueError, match="correlation data of 65,536 bytes"):
        P.encode({P.CORRELATION_DATA: b"x" * 65_536})
    with pytest.raises(ValueError, match="message expiry interval must be a whole number from 0 to 4294967295"):
        P.encode({P.MESSAGE_EXPIRY: 2 ** 32})
    with pytest.raises(ValueError, match="unknown MQTT 5 property 0x7F"):
        P.encode({0x7F: 1})


@pytest.mark.parametrize("block, match", [
    (b"\x04\x26\x00\x01k", "user property value runs past the end"),
    (b"\x09\x26\x00\x01k\x00\xff" + b"v" * 3, "user property value of 255 bytes runs past"),
    (b"\x40\x26", "properties of 64 bytes run past the end of the packet"),
    (b"\x02\x7f\x00", "unknown MQTT 5 property 0x7F"),
    (b"\x04\x01\x00\x01\x01", "payload format indicator given twice"),
    (b"\x03\x02\x00\x00", "message expiry interval runs past the end"),
    (b"\x05\x03\x00\x02\xff\xfe", "content type is not UTF-8"),
    (b"\xff\xff\xff\xff\x7f", "variable byte integer longer than 4 bytes"),
])
def test_malformed_properties_are_protocol_errors(block, match):
    with pytest.raises(ProtocolError, match=match):
        P.decode(block, 0)


def test_a_property_block_cannot_read_past_its_packet():
    """The block's length is checked against the packet, not trusted: a PUBLISH whose
    properties claim more bytes than the packet has fails, naming it."""
    body = b"\x00\x01t" + b"\x7f" + b"\x26\x00"
    with pytest.raises(ProtocolError, match="run past the end of the packet"):
        codec.parse_publish5(0, body)


@given(properties, st.binary(max_size=50))
@settings(max_examples=200, deadline=None)
def test_read_publish5_agrees_with_a_full_decode_first_time_and_from_its_memo(props, payload):
    p = codec.publish5(b"a/b", payload, 1, False, 9, P.encode(props))
    [(_, flags, body)] = codec.Decoder().feed(p)
    _, _, _, full, rest = codec.parse_publish5(flags, body)
    own = {k: full.pop(k) for k in (P.TOPIC_ALIAS, P.SUBSCRIPTION_ID) if k in full}
    expected = (b"a/b", 1, 9, P.envelope_of(full), own, payload)
    assert rest == payload
    assert codec.read_publish5(flags, body) == expected
    assert codec.read_publish5(flags, body) == expected   # the second time from the memo


def test_envelope_block_round_trips_and_bounds_headers():
    env = Envelope(headers=(("a", "1"), ("a", "2")), content_type="text/plain", expiry_s=5,
                   response_topic="r/t", correlation_data=b"\x00", utf8=True)
    assert P.read_envelope(P.envelope_block(env), 0)[0] == env
    with pytest.raises(ValueError, match="user property value of 65,536 bytes"):
        P.envelope_block(Envelope(headers=(("big", "v" * 65_536),)))
