"""The message bus interface and the in-process bus.

A `Bus` connects iotwasm to where messages come from and go to. Every bus is used from one
asyncio event loop: `publish` and `subscribe` are coroutines, and handlers are called on that
loop (one message at a time per subscription, in arrival order). This module knows no
transport: the MQTT and NATS buses, and `open_bus` that picks one from a URL, live beside it
(`transports.py`), so the interface imports none of them.

Delivery guarantees, reconnect behaviour and URL forms are described in docs/messaging.md.

The interface lives in three modules, re-exported here so that callers import it from one
place: `bus_interface` (the abstract `Bus`, its state, statistics and last will, and the
helpers every bus shares), `subscription` (a handler on a topic filter, the outcomes a message
is settled with, `Settlement`) and `memory_bus` (`InProcessBus`).
"""

from __future__ import annotations

from .bus_interface import (
    Bus,
    BusState,
    BusStats,
    Outgoing,
    StateCallback,
    Will,
    as_payload,
    check_qos,
    settled,
)
from .memory_bus import InProcessBus
from .subscription import (
    DROPPED,
    FAILED,
    OK,
    RELEASED,
    Done,
    FastPath,
    Handler,
    Settlement,
    Subscription,
)

__all__ = [
    "Bus", "BusState", "BusStats", "Outgoing", "StateCallback", "Will", "as_payload", "check_qos", "settled",
    "InProcessBus",
    "DROPPED", "FAILED", "OK", "RELEASED", "Done", "FastPath", "Handler", "Settlement", "Subscription",
]
