"""MQTT topics and topic filters, and their mapping to NATS subjects.

Topics are MQTT-style everywhere in iotwasm: levels separated by ``/``, and in *filters* the
wildcards ``+`` (exactly one level) and ``#`` (any number of levels, including none, so ``a/#``
matches ``a`` itself; only as the last level). As in MQTT 3.1.1 (section 4.7.2), a filter that
starts with a wildcard does not match topics whose first character is ``$`` (``$SYS/...``):
those must be asked for by name.

Empty levels are legal MQTT (``a//b``, ``/a``) and ``+`` matches an empty level.

NATS mapping
------------
NATS subjects separate tokens with ``.``, its wildcards are ``*`` (one token) and ``>`` (one or
more tokens, last only). `to_nats_subject` maps ``/`` -> ``.``, ``+`` -> ``*``, ``#`` -> ``>``.
There is no escaping: a topic that cannot be represented one-to-one is *refused* with
`InvalidTopic` rather than silently rewritten, because a rewritten topic (``temp.c`` ->
``temp_c``) would collide with another topic and come back under a different name. Refused on
NATS are topics or filters with

* a level containing ``.``, whitespace, ``*`` or ``>`` (they are separators or wildcards there),
* an empty level (``a//b``, ``/a``, ``a/``): NATS has no empty tokens,
* a first level that starts with ``$`` (``$SYS``, ``$JS`` are the server's own subjects) or
  that is ``_INBOX`` (request/reply inboxes).

One difference remains in semantics: NATS ``a.>`` does not match ``a``, MQTT ``a/#`` does.
`nats_subjects_for_filter` therefore returns both ``a`` and ``a.>`` for ``a/#``; a bus that
subscribes with it keeps the MQTT meaning.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidTopic

MAX_TOPIC_BYTES = 65535

_NATS_FORBIDDEN = frozenset(".*> \t\r\n\f\v")


def _check_common(text: str, what: str) -> None:
    if not isinstance(text, str):
        raise InvalidTopic(f"{what} must be a str, not {type(text).__name__}")
    if text == "":
        raise InvalidTopic(f"{what} is empty")
    if "\x00" in text:
        raise InvalidTopic(f"{what} {text!r} contains a NUL character")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        raise InvalidTopic(f"{what} is longer than {MAX_TOPIC_BYTES} bytes")


def validate_topic(topic: str) -> str:
    """Check a topic *name* (what a message is published on); return it unchanged.

    Wildcards are not allowed in topic names.
    """
    _check_common(topic, "topic")
    if "+" in topic or "#" in topic:
        raise InvalidTopic(f"topic {topic!r} contains a wildcard (+ or #); wildcards are only for filters")
    return topic


def validate_filter(topic_filter: str) -> str:
    """Check a topic *filter* (what is subscribed to); return it unchanged."""
    _check_common(topic_filter, "topic filter")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level:
            if level != "#":
                raise InvalidTopic(f"topic filter {topic_filter!r}: '#' must be a whole level")
            if i != len(levels) - 1:
                raise InvalidTopic(f"topic filter {topic_filter!r}: '#' must be the last level")
        if "+" in level and level != "+":
            raise InvalidTopic(f"topic filter {topic_filter!r}: '+' must be a whole level")
    return topic_filter


def is_wildcard(topic_filter: str) -> bool:
    return "+" in topic_filter or "#" in topic_filter


def matches(topic_filter: str, topic: str) -> bool:
    """Does the filter match the topic name? Both are assumed valid (see `validate_*`)."""
    f = topic_filter.split("/")
    t = topic.split("/")
    if topic.startswith("$") and f[0] in ("+", "#"):
        return False
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t):
            return False
        if level != "+" and level != t[i]:
            return False
    return len(f) == len(t)


def covers(granted: str, requested: str) -> bool:
    """Is every topic that `requested` can match also matched by `granted`?

    Used for subscribe permissions: a grant of ``sensors/#`` covers a request for
    ``sensors/+/temp`` but not the other way round. Exact and conservative: ``covers`` is true
    if and only if no topic exists that `requested` matches and `granted` does not.
    """
    g = granted.split("/")
    r = requested.split("/")
    for i, gl in enumerate(g):
        if gl == "#":
            # a leading '#' does not reach $-topics; a request for a $-topic by name escapes it
            return not (i == 0 and r[0] not in ("+", "#") and r[0].startswith("$"))
        if i >= len(r):
            return False  # requested matches topics with exactly i levels, granted needs more
        rl = r[i]
        if rl == "#":
            # requested reaches any depth from here, including level i-1 itself; only '#'
            # covers that, except at the root: every topic has a first level, so '+/#'
            # covers '#'
            return i == 0 and g[1:] == ["#"] and gl == "+"

        if rl == "+":
            if gl != "+":
                return False
            continue
        # requested has a literal level here
        if gl == "+":
            if i == 0 and rl.startswith("$"):
                return False
            continue
        if gl != rl:
            return False
    return len(g) == len(r)


# --------------------------------------------------------------------------------------------
# NATS


def _nats_levels(text: str, what: str, *, allow_wildcards: bool) -> list[str]:
    if allow_wildcards:
        validate_filter(text)
    else:
        validate_topic(text)
    levels = text.split("/")
    first = levels[0]
    if first.startswith("$"):
        raise InvalidTopic(
            f"{what} {text!r} cannot be used on NATS: subjects starting with '$' belong to the server"
        )
    if first == "_INBOX":
        raise InvalidTopic(f"{what} {text!r} cannot be used on NATS: '_INBOX' is reserved for replies")
    for level in levels:
        if level == "":
            raise InvalidTopic(f"{what} {text!r} cannot be used on NATS: it has an empty level")
        if level in ("+", "#"):
            continue
        bad = sorted(set(level) & _NATS_FORBIDDEN)
        if bad:
            shown = ", ".join(repr(c) for c in bad)
            raise InvalidTopic(
                f"{what} {text!r} cannot be used on NATS: level {level!r} contains {shown}, "
                "which NATS uses as separator, wildcard or delimiter (topics are not escaped)"
            )
    return levels


def to_nats_subject(topic_or_filter: str) -> str:
    """Map an MQTT topic or filter to a NATS subject; refuse what has no one-to-one form."""
    levels = _nats_levels(topic_or_filter, "topic", allow_wildcards=True)
    return ".".join("*" if lv == "+" else ">" if lv == "#" else lv for lv in levels)


def nats_subjects_for_filter(topic_filter: str) -> list[str]:
    """The NATS subjects to subscribe to so that exactly the filter's topics arrive.

    Like `to_nats_subject`, but ``a/#`` gives ``["a", "a.>"]`` because NATS ``>`` needs at least
    one more token while MQTT ``#`` also matches the parent level.
    """
    subject = to_nats_subject(topic_filter)
    if subject.endswith(".>"):
        return [subject[:-2], subject]
    return [subject]


def from_nats_subject(subject: str) -> str:
    """Map a NATS subject (or subject filter) back to an MQTT topic (or filter)."""
    if not isinstance(subject, str) or subject == "":
        raise InvalidTopic("NATS subject is empty")
    tokens = subject.split(".")
    out = []
    for i, tok in enumerate(tokens):
        if tok == "":
            raise InvalidTopic(f"NATS subject {subject!r} has an empty token")
        if tok == "*":
            out.append("+")
        elif tok == ">":
            if i != len(tokens) - 1:
                raise InvalidTopic(f"NATS subject {subject!r}: '>' must be the last token")
            out.append("#")
        elif "/" in tok or "+" in tok or "#" in tok:
            raise InvalidTopic(
                f"NATS subject {subject!r} has no MQTT form: token {tok!r} contains '/', '+' or '#'"
            )
        else:
            out.append(tok)
    return "/".join(out)


def nats_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` one token, ``>`` one or more trailing tokens."""
    p = pattern.split(".")
    s = subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s):
            return False
        if tok != "*" and tok != s[i]:
            return False
    return len(p) == len(s)


def nats_covers(granted: str, requested: str) -> bool:
    """Is every subject matched by the `requested` NATS pattern also matched by `granted`?"""
    g = granted.split(".")
    r = requested.split(".")
    for i, gt in enumerate(g):
        if gt == ">":
            return len(r) > i
        if i >= len(r):
            return False
        rt = r[i]
        if rt == ">":
            return False
        if rt == "*":
            if gt != "*":
                return False
        elif gt != "*" and gt != rt:
            return False
    return len(g) == len(r)


@dataclass(frozen=True, slots=True)
class OrderKey:
    """The part of a topic that keys the order a subscriber needs (a route's per-device
    order): the topic level at `level` (from 0), with `rest` that level and all after it;
    `level` None: the whole topic. A bus that spreads one subscription's messages over
    several consumers (`WorkerBus` behind an `Ingress`) gives all messages with one key to
    the same consumer, so their order holds; the other buses have one consumer and ignore it."""

    level: int | None = None
    rest: bool = False

    def of(self, topic: str) -> str:
        if self.level is None:
            return topic
        if self.rest:
            return "/".join(topic.split("/")[self.level:])
        levels = topic.split("/", self.level + 1)
        return levels[self.level] if self.level < len(levels) else topic
