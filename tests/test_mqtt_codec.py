"""The MQTT 3.1.1 wire format of MqttBus: encoders against the spec's byte layouts, and the
incremental decoder on streams cut at every possible point."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotwasm.messaging import mqtt_codec as codec


def test_connect_layout_with_will_and_credentials():
    p = codec.connect("dev-1", clean_session=False, keepalive=30, username="u", password="pw",
                      will=("status/dev-1", b"offline", 1, True))
    assert p[0] == 0x10
    body = p[2:]
    assert p[1] == len(body)
    assert body[:7] == b"\x00\x04MQTT\x04"
    # user, password, will retain, will qos 1, will flag; clean session off
    assert body[7] == 0x80 | 0x40 | 0x20 | 0x08 | 0x04
    assert body[8:10] == b"\x00\x1e"
    assert body[10:] == (b"\x00\x05dev-1" b"\x00\x0cstatus/dev-1" b"\x00\x07offline"
                         b"\x00\x01u" b"\x00\x02pw")


def test_publish_qos1_and_puback_layout():
    p = codec.publish(b"a/b", b"xyz", 1, True, mid=0x1234)
    assert p == b"\x33\x0a\x00\x03a/b\x12\x34xyz"
    assert codec.with_dup(p)[0] == 0x3B
    assert codec.puback(0x1234) == b"\x40\x02\x12\x34"
    assert codec.publish(b"t", b"", 0, False) == b"\x30\x03\x00\x01t"


@pytest.mark.parametrize("remaining,length_bytes", [(3, 1), (127, 1), (128, 2), (16383, 2),
                                                    (16384, 3), (2_097_151, 3), (2_097_152, 4)])
def test_remaining_length_boundaries(remaining, length_bytes):
    payload = b"p" * (remaining - 3)  # 2-byte topic length + topic "t"
    p = codec.publish(b"t", payload, 0, False)
    assert len(p) == 1 + length_bytes + remaining
    [(ptype, flags, body)] = codec.Decoder().feed(p)
    assert (ptype, flags, len(body)) == (codec.PUBLISH, 0, remaining)
    assert codec.parse_publish(flags, body) == (b"t", 0, 0, payload)


packets = st.lists(st.tuples(st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b),
                             st.binary(max_size=300), st.sampled_from([0, 1]),
                             st.integers(1, 65535)), min_size=1, max_size=20)


@given(packets, st.data())
@settings(max_examples=150, deadline=None)
def test_decoder_reassembles_a_stream_cut_anywhere(items, data):
    stream = b"".join(codec.publish(t, p, q, False, m if q else 0) for t, p, q, m in items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    dec = codec.Decoder()
    got = []
    prev = 0
    for c in cuts + [len(stream)]:
        got += dec.feed(stream[prev:c])
        prev = c
    decoded = [codec.parse_publish(f, b) for _, f, b in got]
    assert decoded == [(t, q, m if q else 0, p) for t, p, q, m in items]


def test_remaining_length_of_five_bytes_is_a_protocol_error():
    with pytest.raises(codec.ProtocolError, match="remaining length"):
        codec.Decoder().feed(b"\x30\xff\xff\xff\xff\x01")


def test_subscribe_and_unsubscribe_layout():
    assert codec.subscribe(7, [("a/#", 1), ("b", 0)]) == \
        b"\x82\x0c\x00\x07\x00\x03a/#\x01\x00\x01b\x00"
    assert codec.unsubscribe(8, ["a/#"]) == b"\xa2\x07\x00\x08\x00\x03a/#"


def test_a_large_publish_arriving_in_many_small_reads():
    payload = bytes(range(256)) * 4096  # 1 MiB
    stream = codec.publish(b"big", payload, 1, False, 9) + codec.puback(3)
    dec = codec.Decoder()
    got = []
    for i in range(0, len(stream), 4096):
        got += dec.feed(stream[i:i + 4096])
    assert [p[0] for p in got] == [codec.PUBLISH, codec.PUBACK]
    assert codec.parse_publish(got[0][1], got[0][2]) == (b"big", 1, 9, payload)
    assert codec.packet_id(got[1][2]) == 3


@pytest.mark.parametrize("cut", [1, 2, 3, 5])
def test_a_packet_over_the_size_limit_is_refused_before_it_is_buffered(cut):
    """The limit applies as soon as the length is known: a broker announcing 256 MiB gets an
    error after a few bytes, not 256 MiB of buffer."""
    dec = codec.Decoder(max_packet_size=1024)
    header = b"\x30\xff\xff\xff\x7f"  # PUBLISH, remaining length 268,435,455
    with pytest.raises(codec.PacketTooLarge, match=r"268,435,460 bytes.*limit of 1,024"):
        dec.feed(header[:cut])
        dec.feed(header[cut:] + b"\x00\x01t")
    assert len(dec._buf) < 16


def test_a_packet_at_the_size_limit_is_taken():
    p = codec.publish(b"t", b"x" * 100, 0, False)
    dec = codec.Decoder(max_packet_size=len(p))   # the whole packet, fixed header included
    assert [t for t, _, _ in dec.feed(p)] == [codec.PUBLISH]
    with pytest.raises(codec.PacketTooLarge):
        codec.Decoder(max_packet_size=len(p) - 1).feed(p)


def test_publish_with_qos_3_is_a_protocol_error():
    body = b"\x00\x01t\x00\x07payload"
    with pytest.raises(codec.ProtocolError, match="QoS 3"):
        codec.parse_publish(0x06, body)
    assert codec.parse_publish(0x02, body)[1:3] == (1, 7)


def test_publish_too_short_for_its_topic_or_packet_id_is_a_protocol_error():
    with pytest.raises(codec.ProtocolError):
        codec.parse_publish(0x02, b"\x00\x05ab")


def test_packets_before_the_bad_bytes_come_with_the_error():
    """A CONNACK and an oversized packet in one read: the CONNACK is not lost with the error."""
    with pytest.raises(codec.PacketTooLarge) as info:
        codec.Decoder(max_packet_size=1024).feed(b"\x20\x02\x00\x00" + b"\x30\xff\xff\xff\x7f")
    assert [(t, bytes(b)) for t, _, b in info.value.packets] == [(codec.CONNACK, b"\x00\x00")]
