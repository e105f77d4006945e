"""Errors of the messaging layer.

They subclass `IotwasmError`, so a caller that already reacts to iotwasm's typed errors handles
these too. The kinds tell a caller what to do next:

* `BrokerUnavailable` and `PublishTimeout`: the message was *not* confirmed; the caller still
  owns it and decides whether to retry, keep it for later or dead-letter it.
* `PublishDenied` and `SubscribeDenied`: an access rule said no; retrying will not help.
* `InvalidTopic`: the topic or filter cannot be used (syntax, or not representable on NATS).
"""

from __future__ import annotations

from ..errors import IotwasmError, SinkRejected


class MessagingError(IotwasmError):
    """Base of the errors raised by `iotwasm.messaging`."""

    kind = "messaging"


class BrokerUnavailable(MessagingError):
    """The bus is not connected to its broker (or was closed); nothing was sent."""

    kind = "broker_unavailable"


class PublishTimeout(MessagingError):
    """The message went out but the broker did not acknowledge it in time.

    It may or may not have been stored by the broker: retrying gives at-least-once delivery.
    """

    kind = "publish_timeout"


class PublishDenied(MessagingError):
    """An access rule does not allow publishing on this topic."""

    kind = "publish_denied"
    #: the broker's MQTT 5 reason code when the broker said no; None for a local rule
    reason_code: int | None = None


class SubscribeDenied(MessagingError):
    """An access rule (local or the broker's) does not allow subscribing to this filter."""

    kind = "subscribe_denied"
    #: the broker's reason code (0x80 and up) when the broker said no; None for a local rule
    reason_code: int | None = None


class InvalidTopic(MessagingError, ValueError):
    """A topic or topic filter is malformed, or cannot be carried by the chosen transport."""

    kind = "invalid_topic"


class PublishRefused(MessagingError):
    """The broker refused the message with an MQTT 5 reason code (quota exceeded, payload
    format invalid, ...); `reason_code` holds it. Not sent again by the bus."""

    kind = "publish_refused"

    def __init__(self, message: str, *, reason_code: int = 0x80):
        super().__init__(message)
        self.reason_code = reason_code


class MessageTooLarge(MessagingError, SinkRejected):
    """The message would make a packet larger than the broker accepts (MQTT 5's maximum
    packet size): it was not sent, and sending it again will not help (a `SinkRejected`:
    through an outbox it becomes a dead letter, and the messages behind it go on)."""

    kind = "message_too_large"


class PublishRejected(PublishRefused, SinkRejected):
    """The broker refused this message for what it is (MQTT 5 reason 0x90 topic name
    invalid, 0x95 packet too large, 0x99 payload format invalid): sending it again will not
    help, so through an outbox it becomes a dead letter and the messages behind it go on. Other
    refusals (not authorized, quota exceeded, unspecified) may pass and are retried."""


#: MQTT 5 PUBACK reason codes about the message itself (`PublishRejected`)
REJECTED_FOR_GOOD = frozenset({0x90, 0x95, 0x99})
