"""Topic access rules for one principal (a module, a container, a device).

Deny by default: a `TopicACL` with no grants allows nothing. Grants are MQTT topic filters.

* Publishing on a topic is allowed when any publish grant *matches* the topic.
* Subscribing to a filter is allowed when any single subscribe grant *covers* the filter, i.e.
  every topic the filter can match is matched by that grant (`topics.covers`). Grants are not
  combined: with grants ``a/x`` and ``a/y`` a request for ``a/+`` is denied, because ``a/+``
  would also receive ``a/z``. Ask for the exact filters instead.

``$``-topics follow MQTT: a grant of ``#`` does not give access to ``$SYS/...``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import PublishDenied, SubscribeDenied
from .topics import covers, matches, validate_filter, validate_topic


@dataclass(slots=True)
class ACLStats:
    publish_denied: int = 0
    subscribe_denied: int = 0


@dataclass(slots=True)
class TopicACL:
    publish: list[str] = field(default_factory=list)
    subscribe: list[str] = field(default_factory=list)
    principal: str = "anonymous"
    stats: ACLStats = field(default_factory=ACLStats)

    def __post_init__(self) -> None:
        self.publish = [validate_filter(g) for g in self.publish]
        self.subscribe = [validate_filter(g) for g in self.subscribe]

    @classmethod
    def allow_all(cls, principal: str = "anonymous") -> "TopicACL":
        """Everything except ``$``-topics (which leading wildcards never reach)."""
        return cls(["#"], ["#"], principal)

    def can_publish(self, topic: str) -> bool:
        validate_topic(topic)
        return any(matches(g, topic) for g in self.publish)

    def can_subscribe(self, topic_filter: str) -> bool:
        validate_filter(topic_filter)
        return any(covers(g, topic_filter) for g in self.subscribe)

    def check_publish(self, topic: str) -> None:
        if not self.can_publish(topic):
            self.stats.publish_denied += 1
            raise PublishDenied(
                f"{self.principal} may not publish on {topic!r} "
                f"(publish grants: {_grants(self.publish)})"
            )

    def check_subscribe(self, topic_filter: str) -> None:
        if not self.can_subscribe(topic_filter):
            self.stats.subscribe_denied += 1
            raise SubscribeDenied(
                f"{self.principal} may not subscribe to {topic_filter!r} "
                f"(subscribe grants: {_grants(self.subscribe)})"
            )


def _grants(grants: list[str]) -> str:
    return ", ".join(repr(g) for g in grants) if grants else "none"
