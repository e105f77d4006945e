"""Errors of the MQTT wire format, shared by the codec and the MQTT 5 properties.

They are not `MessagingError`s: a caller of the bus never sees them. The connection that read
the bad bytes logs one line naming the fault and reconnects.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """The peer sent bytes that are not MQTT (3.1.1 or 5, as the connection speaks).

    Raised by `Decoder.feed`, it carries in `packets` the packets that came complete before
    the offending bytes (a CONNACK, say), so the caller can still act on them."""

    packets: list[tuple[int, int, bytes]] = []


class PacketTooLarge(ProtocolError):
    """The peer announced a packet larger than the decoder's limit."""

    def __init__(self, size: int, limit: int):
        super().__init__(f"MQTT packet of {size:,} bytes exceeds the limit of {limit:,} bytes")
        self.size = size
        self.limit = limit
