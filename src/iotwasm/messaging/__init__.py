"""Messaging: MQTT-style topics, access rules and buses (in-process, MQTT, NATS).

    from iotwasm.messaging import open_bus

    bus = open_bus("mqtt://127.0.0.1:1883")
    await bus.connect()
    await bus.subscribe("sensors/+/temperature", handler, qos=1)
    await bus.publish("sensors/t1/temperature", b"21.5", qos=1)

See docs/messaging.md. `MqttBus` and `NatsBus` are imported on first use: the NATS bus needs
nats-py, and a process that only speaks MQTT need not load it.
"""

from __future__ import annotations

from typing import Any

from .acl import ACLStats, TopicACL
from .bus import (
    Bus,
    BusState,
    BusStats,
    Handler,
    InProcessBus,
    Subscription,
    Will,
)
from .errors import (
    BrokerUnavailable,
    InvalidTopic,
    MessageTooLarge,
    MessagingError,
    PublishDenied,
    PublishRefused,
    PublishTimeout,
    SubscribeDenied,
)
from .topics import (
    OrderKey,
    covers,
    from_nats_subject,
    matches,
    nats_subjects_for_filter,
    to_nats_subject,
    validate_filter,
    validate_topic,
)
from .transports import open_bus

__all__ = [
    "ACLStats", "TopicACL",
    "Bus", "BusState", "BusStats", "Handler", "InProcessBus", "Subscription", "Will", "open_bus",
    "MqttBus", "NatsBus",
    "BrokerUnavailable", "InvalidTopic", "MessageTooLarge", "MessagingError", "PublishDenied",
    "PublishRefused", "PublishTimeout", "SubscribeDenied",
    "OrderKey", "covers", "from_nats_subject", "matches", "nats_subjects_for_filter", "to_nats_subject",
    "validate_filter", "validate_topic",
]


def __getattr__(name: str) -> Any:
    if name == "MqttBus":
        from .mqtt_bus import MqttBus

        return MqttBus
    if name == "NatsBus":
        from .nats_bus import NatsBus

        return NatsBus
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
