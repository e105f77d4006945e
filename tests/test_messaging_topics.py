"""Topic filters, coverage, NATS subject mapping and access rules."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotwasm.errors import IotwasmError
from iotwasm.messaging import (
    InvalidTopic,
    PublishDenied,
    SubscribeDenied,
    TopicACL,
    covers,
    from_nats_subject,
    matches,
    nats_subjects_for_filter,
    to_nats_subject,
    validate_filter,
    validate_topic,
)
from iotwasm.messaging.topics import nats_covers, nats_matches

# ---------------------------------------------------------------------------- matching


@pytest.mark.parametrize(
    "flt, topic, expected",
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/+", "a", False),
        ("a/+", "a/", True),  # + matches an empty level
        ("+/+", "/x", True),
        ("a/#", "a", True),  # '#' also matches the parent level
        ("a/#", "a/b/c", True),
        ("a/#", "ab", False),
        ("#", "a/b", True),
        ("+", "a/b", False),
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/d", False),
        ("#", "$SYS/load", False),  # leading wildcards never reach $-topics
        ("+/load", "$SYS/load", False),
        ("$SYS/#", "$SYS/load", True),
        ("$SYS/+", "$SYS/load", True),
        ("a/$x", "a/$x", True),
        ("a/+", "a/$x", True),  # '$' is special only at the very start
    ],
)
def test_matches(flt, topic, expected):
    assert matches(flt, topic) is expected


@pytest.mark.parametrize("bad", ["", "a/+", "#", "a/#", "a\x00b"])
def test_validate_topic_rejects(bad):
    with pytest.raises(InvalidTopic) as err:
        validate_topic(bad)
    assert isinstance(err.value, IotwasmError) and isinstance(err.value, ValueError)


@pytest.mark.parametrize("bad", ["", "a/#/b", "a#", "a/b#", "a+/b", "+a", "a/++", "a\x00"])
def test_validate_filter_rejects(bad):
    with pytest.raises(InvalidTopic):
        validate_filter(bad)


def test_validate_errors_say_what_is_wrong():
    with pytest.raises(InvalidTopic, match="'#' must be the last level"):
        validate_filter("a/#/b")
    with pytest.raises(InvalidTopic, match=r"'\+' must be a whole level"):
        validate_filter("a/b+")
    with pytest.raises(InvalidTopic, match="wildcard"):
        validate_topic("a/+")
    with pytest.raises(InvalidTopic, match="longer than 65535"):
        validate_topic("x" * 65536)


@pytest.mark.parametrize("ok", ["a", "/", "a//b", "$SYS/x", "+", "#", "+/+/#", "a/+/c/#"])
def test_validate_filter_accepts(ok):
    assert validate_filter(ok) == ok


# ---------------------------------------------------------------------------- covers


@pytest.mark.parametrize(
    "granted, requested, expected",
    [
        ("#", "a/b", True),
        ("#", "a/#", True),
        ("+/#", "#", True),  # every topic has a first level
        ("+/+/#", "#", False),
        ("a/+/#", "a/#", False),
        ("#", "+/x", True),
        ("#", "$SYS/#", False),
        ("#", "$SYS/x", False),
        ("+/#", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("a/#", "a", True),
        ("a/#", "a/+/c", True),
        ("a/+", "a/#", False),  # a/# also matches a and a/b/c
        ("a/+", "a/+", True),
        ("a/+", "a/b", True),
        ("a/b", "a/+", False),
        ("a/+/c", "a/+/+", False),
        ("+/+", "a/b", True),
        ("a", "a/#", False),
        ("a/b/#", "a/#", False),
    ],
)
def test_covers(granted, requested, expected):
    assert covers(granted, requested) is expected


# A small world in which coverage can be decided by brute force: filters use the levels
# below; topics additionally use 'z' (a level no filter names) and the empty level.
LEVELS = ["a", "b", "$s"]
FILTER_LEVELS = st.sampled_from(LEVELS + ["+"])
TOPIC_UNIVERSE = [
    "/".join(p)
    for n in range(1, 5)
    for p in itertools.product(LEVELS + ["z", ""], repeat=n)
]


@st.composite
def filters(draw):
    levels = draw(st.lists(FILTER_LEVELS, min_size=0, max_size=3))
    if not levels or draw(st.booleans()):
        levels.append("#")
    return "/".join(levels)


@st.composite
def topics(draw):
    return "/".join(draw(st.lists(st.sampled_from(LEVELS + ["z", ""]), min_size=1, max_size=4)))


@settings(max_examples=300, deadline=None)
@given(filters(), filters(), topics())
def test_covers_implies_matches(granted, requested, topic):
    """Soundness: whatever the requested filter matches, a covering grant matches too."""
    validate_filter(granted), validate_filter(requested)
    if covers(granted, requested) and matches(requested, topic):
        assert matches(granted, topic)


@settings(max_examples=150, deadline=None)
@given(filters(), filters())
def test_covers_is_exact(granted, requested):
    """Exactness: covers is false only when a topic exists that shows the gap."""
    witnesses = [t for t in TOPIC_UNIVERSE if matches(requested, t) and not matches(granted, t)]
    assert covers(granted, requested) is (not witnesses), witnesses[:3]


@settings(max_examples=200, deadline=None)
@given(filters())
def test_covers_is_reflexive(flt):
    assert covers(flt, flt)


@settings(max_examples=200, deadline=None)
@given(filters(), filters(), filters())
def test_covers_is_transitive(a, b, c):
    if covers(a, b) and covers(b, c):
        assert covers(a, c)


# ---------------------------------------------------------------------------- NATS mapping


@pytest.mark.parametrize(
    "mqtt, nats",
    [
        ("sensors/t1/temp", "sensors.t1.temp"),
        ("sensors/+/temp", "sensors.*.temp"),
        ("sensors/#", "sensors.>"),
        ("#", ">"),
        ("+", "*"),
    ],
)
def test_nats_mapping_round_trip(mqtt, nats):
    assert to_nats_subject(mqtt) == nats
    assert from_nats_subject(nats) == mqtt


@pytest.mark.parametrize(
    "topic, why",
    [
        ("temp.c", "contains '.'"),
        ("room 1/temp", "contains ' '"),
        ("a/b*c", "contains '\\*'"),
        ("a/b>", "contains '>'"),
        ("a//b", "empty level"),
        ("/a", "empty level"),
        ("a/", "empty level"),
        ("$SYS/x", "belong to the server"),
        ("_INBOX/x", "reserved"),
    ],
)
def test_nats_refuses_topics_without_a_subject(topic, why):
    with pytest.raises(InvalidTopic, match=why):
        to_nats_subject(topic)


def test_nats_filter_hash_keeps_mqtt_meaning():
    # MQTT a/# matches a; NATS a.> does not, so both are subscribed
    assert nats_subjects_for_filter("a/#") == ["a", "a.>"]
    assert nats_subjects_for_filter("#") == [">"]
    assert nats_subjects_for_filter("a/+") == ["a.*"]
    for t in ["a", "a/b", "a/b/c"]:
        assert any(nats_matches(s, to_nats_subject(t)) for s in nats_subjects_for_filter("a/#"))
    assert not any(nats_matches(s, "ab") for s in nats_subjects_for_filter("a/#"))


@pytest.mark.parametrize("bad", ["a..b", "a.>.b", "a/b.c", "a.b+c", ""])
def test_from_nats_subject_refuses(bad):
    with pytest.raises(InvalidTopic):
        from_nats_subject(bad)


NATS_TOKENS = st.sampled_from(["a", "b", "*"])


@st.composite
def nats_patterns(draw):
    toks = draw(st.lists(NATS_TOKENS, min_size=1, max_size=3))
    if draw(st.booleans()):
        toks.append(">")
    return ".".join(toks)


NATS_UNIVERSE = [".".join(p) for n in range(1, 5) for p in itertools.product(["a", "b", "z"], repeat=n)]


@settings(max_examples=200, deadline=None)
@given(nats_patterns(), nats_patterns())
def test_nats_covers_is_exact(granted, requested):
    witnesses = [s for s in NATS_UNIVERSE if nats_matches(requested, s) and not nats_matches(granted, s)]
    assert nats_covers(granted, requested) is (not witnesses), witnesses[:3]


@settings(max_examples=200, deadline=None)
@given(filters(), topics())
def test_nats_mapping_preserves_matching(flt, topic):
    """Where both map to NATS, NATS matching agrees with MQTT matching."""
    try:
        subjects = nats_subjects_for_filter(flt)
        subject = to_nats_subject(topic)
    except InvalidTopic:
        return
    assert any(nats_matches(s, subject) for s in subjects) is matches(flt, topic)


# ---------------------------------------------------------------------------- ACL


def test_acl_denies_by_default():
    acl = TopicACL(principal="mod-a")
    assert not acl.can_publish("a")
    assert not acl.can_subscribe("a")
    with pytest.raises(PublishDenied) as err:
        acl.check_publish("a/b")
    msg = str(err.value)
    assert "mod-a" in msg and "'a/b'" in msg and "none" in msg and "\n" not in msg


def test_acl_publish_and_subscribe():
    acl = TopicACL(publish=["out/+/temp"], subscribe=["sensors/#", "cmd/dev1"], principal="dev1")
    assert acl.can_publish("out/x/temp")
    assert not acl.can_publish("out/x/humidity")
    assert acl.can_subscribe("sensors/+/temp")
    assert acl.can_subscribe("sensors")
    assert acl.can_subscribe("cmd/dev1")
    assert not acl.can_subscribe("cmd/+")  # would also receive cmd/dev2
    assert not acl.can_subscribe("#")
    with pytest.raises(SubscribeDenied) as err:
        acl.check_subscribe("cmd/+")
    assert str(err.value) == (
        "dev1 may not subscribe to 'cmd/+' (subscribe grants: 'sensors/#', 'cmd/dev1')"
    )
    acl.check_subscribe("sensors/a")
    acl.check_publish("out/a/temp")
    with pytest.raises(PublishDenied):
        acl.check_publish("out/a/b/temp")
    assert (acl.stats.publish_denied, acl.stats.subscribe_denied) == (1, 1)


def test_acl_grants_are_not_combined():
    acl = TopicACL(subscribe=["a/x", "a/y"])
    assert acl.can_subscribe("a/x") and acl.can_subscribe("a/y")
    assert not acl.can_subscribe("a/+")


def test_acl_hash_grant_does_not_reach_dollar_topics():
    acl = TopicACL.allow_all("root")
    assert acl.can_publish("x/y")
    assert not acl.can_publish("$SYS/x")
    assert not acl.can_subscribe("$SYS/#")


def test_acl_validates_grants_and_requests():
    with pytest.raises(InvalidTopic):
        TopicACL(publish=["a/#/b"])
    acl = TopicACL(publish=["#"], subscribe=["#"])
    with pytest.raises(InvalidTopic):
        acl.can_publish("a/+")
    with pytest.raises(InvalidTopic):
        acl.can_subscribe("a/#/b")


@settings(max_examples=200, deadline=None)
@given(st.lists(filters(), max_size=3), filters(), topics())
def test_acl_subscribe_grant_implies_every_delivery_allowed(grants, requested, topic):
    """If a subscription is allowed, every message it can receive is inside some grant."""
    acl = TopicACL(subscribe=grants)
    if acl.can_subscribe(requested) and matches(requested, topic):
        assert any(matches(g, topic) for g in grants)
