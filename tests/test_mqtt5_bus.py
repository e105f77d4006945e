"""MqttBus speaking MQTT 5 to a real Mosquitto 2 (started per test on a free port): message
envelopes (user properties, content type, expiry, request/response), reason codes in errors,
session expiry, the broker's receive maximum and packet limit, and shared subscriptions; and
3.1.1 and 5 clients on one broker."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest
from brokers import Mosquitto, mosquitto  # noqa: F401
from buses import Inbox, run

from iotwasm.errors import ConfigError
from iotwasm.message import Envelope
from iotwasm.messaging import BrokerUnavailable, BusState, PublishDenied, SubscribeDenied, open_bus
from iotwasm.messaging import mqtt_codec as codec
from iotwasm.messaging import mqtt_props as mp
from iotwasm.errors import SinkRejected
from iotwasm.messaging.errors import MessageTooLarge
from iotwasm.messaging.mqtt_bus import MqttBus


def private_broker(tmp_path, name: str, **options) -> Mosquitto:
    return Mosquitto(tmp_path / name, options=options).start()


HEADERS = (("trace-id", "4bf92f35"), ("unit", "°C"), ("unit", "K"), ("empty", ""))


def test_envelope_arrives_unchanged_at_qos_0_and_1(mosquitto):  # noqa: F811
    async def main():
        sub = open_bus(mosquitto.url + "?version=5")
        pub = MqttBus(mosquitto.url, version=5)
        await sub.connect()
        await pub.connect()
        inbox = Inbox()
        await sub.subscribe("env/#", inbox, qos=1)
        env = Envelope(headers=HEADERS, content_type="application/json", utf8=True,
                       response_topic="replies/x", correlation_data=b"\x00\xffid-7",
                       expiry_s=3600)
        await pub.publish("env/a", b'{"t": 21.5}', qos=1, envelope=env)
        await pub.publish("env/b", b"plain", qos=0)
        await pub.publish("env/c", b"headers only", qos=0, envelope=Envelope(headers=HEADERS))
        await inbox.wait_until(lambda i: len(i.messages) == 3, "three messages")
        got = {m.topic: m for m in inbox.messages}
        received = got["env/a"].envelope
        # the broker counts the expiry down by the time the message waited: at most 3600
        assert received.expiry_s is not None and 3590 <= received.expiry_s <= 3600
        assert received == Envelope(headers=HEADERS, content_type="application/json", utf8=True,
                                    response_topic="replies/x", correlation_data=b"\x00\xffid-7",
                                    expiry_s=received.expiry_s)
        assert got["env/b"].envelope is None
        assert got["env/c"].envelope.headers == HEADERS
        assert got["env/c"].envelope.header("unit") == "°C"
        await sub.close()
        await pub.close()

    run(main())


def test_311_and_5_clients_share_a_broker(mosquitto):  # noqa: F811
    """A 3.1.1 subscriber gets an MQTT 5 message's payload without its envelope; a 3.1.1 bus
    refuses to send an envelope it cannot carry instead of dropping it silently."""
    async def main():
        old = MqttBus(mosquitto.url)
        new = MqttBus(mosquitto.url, version=5)
        await old.connect()
        await new.connect()
        old_inbox, new_inbox = Inbox(), Inbox()
        await old.subscribe("mix/#", old_inbox, qos=1)
        await new.subscribe("mix/#", new_inbox, qos=1)
        await new.publish("mix/5", b"from5", qos=1, envelope=Envelope(headers=(("k", "v"),)))
        await old.publish("mix/4", b"from4", qos=1)
        for inbox in (old_inbox, new_inbox):
            await inbox.wait_until(lambda i: len(i.messages) == 2, "both messages")
        assert {(m.topic, m.payload, m.envelope) for m in old_inbox.messages} == {
            ("mix/5", b"from5", None), ("mix/4", b"from4", None)}
        assert {(m.topic, m.envelope) for m in new_inbox.messages} == {
            ("mix/5", Envelope(headers=(("k", "v"),))), ("mix/4", None)}
        with pytest.raises(ConfigError, match=r"MQTT 3\.1\.1 cannot carry the headers .* 'mix/x' \(use version=5\)"):
            await old.publish("mix/x", b"", qos=1, envelope=Envelope(headers=(("k", "v"),)))
        await old.close()
        await new.close()

    run(main())


def test_request_response_with_correlation_data(mosquitto):  # noqa: F811
    async def main():
        service = MqttBus(mosquitto.url, version=5)
        client = MqttBus(mosquitto.url, version=5)
        await service.connect()
        await client.connect()

        async def answer(msg):
            env = msg.envelope
            await service.publish(env.response_topic, msg.payload.upper(), qos=1,
                                  envelope=Envelope(correlation_data=env.correlation_data))

        await service.subscribe("svc/upper", answer, qos=1)
        replies = Inbox()
        await client.subscribe("replies/client-1", replies, qos=1)
        for i in range(5):
            await client.publish("svc/upper", f"req-{i}".encode(), qos=1, envelope=Envelope(
                response_topic="replies/client-1", correlation_data=f"c{i}".encode()))
        await replies.wait_until(lambda i: len(i.messages) == 5, "five replies")
        assert sorted((m.envelope.correlation_data, m.payload) for m in replies.messages) == [
            (f"c{i}".encode(), f"REQ-{i}".encode()) for i in range(5)]
        await service.close()
        await client.close()

    run(main())


def test_session_expiry_zero_ends_the_session_at_disconnect(mosquitto):  # noqa: F811
    """Same client id, persistent (clean start off) both times: with the default expiry the
    broker keeps what arrives while the bus is away; with session_expiry=0 it keeps nothing."""
    async def away_and_back(client_id: str, **kw) -> list[bytes]:
        pub = MqttBus(mosquitto.url, version=5)
        await pub.connect()
        first = MqttBus(mosquitto.url, client_id, version=5, **kw)
        await first.connect()
        await first.subscribe(f"away/{client_id}", Inbox(), qos=1)
        await first.close()
        await pub.publish(f"away/{client_id}", b"while away", qos=1)
        inbox = Inbox()
        again = MqttBus(mosquitto.url, client_id, version=5, **kw)
        await again.subscribe(f"away/{client_id}", inbox, qos=1)
        await again.connect()
        await pub.publish(f"away/{client_id}", b"marker", qos=1)
        await inbox.wait_until(lambda i: b"marker" in i.payloads, "the marker")
        await again.close()
        await pub.close()
        return inbox.payloads

    async def main():
        assert await away_and_back("keeper") == [b"while away", b"marker"]
        assert await away_and_back("forgetter", session_expiry=0) == [b"marker"]

    run(main())


def test_receive_maximum_of_the_broker_is_honoured(tmp_path):
    """Mosquitto announces its receive maximum (max_inflight_messages) in CONNACK: 300
    concurrent QoS 1 publishes through a window of 100 never have more than the broker's 4
    unacknowledged. The same burst on 3.1.1, which has no receive maximum, fills the window."""
    broker = private_broker(tmp_path, "rm", max_inflight_messages=4)
    try:
        async def burst(version: int) -> MqttBus:
            sub = MqttBus(broker.url, version=version)
            pub = MqttBus(broker.url, version=version, max_inflight=100)
            await sub.connect()
            await pub.connect()
            inbox = Inbox()
            await sub.subscribe(f"rm{version}/#", inbox, qos=1)
            results = await asyncio.gather(
                *(pub.publish(f"rm{version}/{i}", str(i).encode(), qos=1) for i in range(300)))
            assert results == [None] * 300
            await inbox.wait_until(lambda i: len(i.messages) == 300, "300 messages")
            assert Counter(inbox.payloads) == Counter(str(i).encode() for i in range(300))
            await sub.close()
            await pub.close()
            return pub

        async def main():
            five = await burst(5)
            assert (five.broker.receive_maximum, five.inflight_limit) == (4, 4)
            assert five.inflight_peak == 4
            assert five.stats.reconnects == 0
            old = await burst(4)
            assert old.inflight_limit == 100 and old.inflight_peak > 4

        run(main())
    finally:
        broker.stop()


DYNSEC = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"


def dynsec_broker(tmp_path) -> Mosquitto:
    """Mosquitto with its dynamic-security plugin: anonymous clients may subscribe to and
    publish on open/# only (the plugin answers a refused SUBSCRIBE in its SUBACK, which
    the ACL file of Mosquitto 2.0 never does)."""
    config = {
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": True,
                             "subscribe": False, "unsubscribe": True},
        "clients": [],
        "roles": [{"rolename": "open", "acls": [
            {"acltype": "subscribePattern", "topic": "open/#", "allow": True},
            {"acltype": "publishClientSend", "topic": "open/#", "allow": True}]}],
        "groups": [{"groupname": "anonymous", "roles": [{"rolename": "open"}]}],
        "anonymousGroup": "anonymous",
    }
    (tmp_path / "dynsec.json").write_text(json.dumps(config))
    return private_broker(tmp_path, "dynsec", plugin=DYNSEC,
                          plugin_opt_config_file=str(tmp_path / "dynsec.json"))


def test_reason_codes_reach_the_errors(tmp_path):
    """The broker's access control says no: SUBACK's and PUBACK's 0x87 come back as
    `SubscribeDenied` and `PublishDenied` naming the reason (3.1.1's SUBACK has only
    'failure', 0x80); a refused CONNECT names its reason code too."""
    (tmp_path / "nobody").write_text("")
    broker = dynsec_broker(tmp_path)
    closed = private_broker(tmp_path, "closed", allow_anonymous="false",
                            password_file=str(tmp_path / "nobody"))
    try:
        async def main():
            bus = MqttBus(broker.url, version=5)
            await bus.connect()
            with pytest.raises(SubscribeDenied, match=r"refused the subscription to 'secret/#' .*: not authorized \(0x87\)") as sub_info:
                await bus.subscribe("secret/#", Inbox(), qos=1)
            assert sub_info.value.reason_code == 0x87
            with pytest.raises(PublishDenied, match=r"refused the message on 'secret/x': not authorized \(0x87\)") as info:
                await bus.publish("secret/x", b"no", qos=1)
            assert info.value.reason_code == 0x87
            inbox = Inbox()
            await bus.subscribe("open/#", inbox, qos=1)
            await bus.publish("open/x", b"yes", qos=1)   # the connection is still fine
            await inbox.wait_until(lambda i: i.payloads == [b"yes"], "the allowed message")
            assert bus.stats.reconnects == 0
            assert [s.filter for s in bus.subscriptions] == ["open/#"]
            await bus.close()

            old = MqttBus(broker.url)
            await old.connect()
            with pytest.raises(SubscribeDenied, match=r"refused the subscription to 'secret/#' .*: failure \(0x80\)"):
                await old.subscribe("secret/#", Inbox(), qos=1)
            await old.close()

            refused = MqttBus(closed.url, version=5, reconnect_min=5.0)
            with pytest.raises(BrokerUnavailable, match=r"refused the connection: (not authorized \(0x87\)|bad user name or password \(0x86\))"):
                await refused.connect(timeout=5)
            assert refused.broker.reason_code in (0x86, 0x87)
            await refused.close()

        run(main())
    finally:
        broker.stop()
        closed.stop()


def test_a_message_larger_than_the_broker_takes_is_refused_before_sending(tmp_path):
    broker = private_broker(tmp_path, "small", max_packet_size=2048)
    try:
        async def main():
            bus = MqttBus(broker.url, version=5)
            await bus.connect()
            assert bus.broker.maximum_packet_size == 2048
            inbox = Inbox()
            await bus.subscribe("big/#", inbox, qos=1)
            with pytest.raises(MessageTooLarge, match=r"'big/1' makes a packet of 3,0\d\d bytes; the broker takes at most 2,048"):
                await bus.publish("big/1", b"x" * 3000, qos=1)
            results = await bus.publish_many([("big/2", b"ok"), ("big/3", b"y" * 3000),
                                              ("big/4", b"after")], qos=1)
            assert results[0] is None and isinstance(results[1], MessageTooLarge)
            assert results[2] is None   # a message that can never go holds nothing back
            assert isinstance(results[1], SinkRejected)   # an outbox dead-letters it
            q0 = await bus.publish_many([("big/6", b"z" * 3000), ("big/7", b"q0")])   # QoS 0 too
            assert isinstance(q0[0], MessageTooLarge) and q0[1] is None
            await bus.publish("big/5", b"small", qos=1)
            await inbox.wait_until(lambda i: i.payloads == [b"ok", b"after", b"q0", b"small"],
                                   "the small ones")
            assert bus.stats.reconnects == 0
            await bus.close()

        run(main())
    finally:
        broker.stop()


def test_the_brokers_disconnect_reason_reaches_the_next_error(mosquitto):  # noqa: F811
    """Mosquitto 2.0 says why it hangs up on an MQTT 5 client only when the client broke a
    rule; a PUBLISH with a topic alias past the broker's maximum is such a break (sent here
    below the bus's API, as only a faulty client would). The reason (0x94) is kept, logged,
    and named by the next error while the bus reconnects."""
    async def main():
        bus = MqttBus(mosquitto.url, version=5, reconnect_min=30.0, reconnect_max=30.0)
        await bus.connect()
        lost = asyncio.Event()
        bus.on_state(lambda state: lost.set() if state == BusState.DISCONNECTED else None)
        bad = codec.publish5(b"t", b"x", 0, False, 0, mp.encode({mp.TOPIC_ALIAS: 999}))
        bus._write(bad)
        await asyncio.wait_for(lost.wait(), 10)
        assert bus.broker.reason_code == 0x94
        with pytest.raises(BrokerUnavailable, match=r"the broker disconnected: topic alias invalid \(0x94\)"):
            await bus.publish("x/y", b"", qos=1)
        await bus.close()

    run(main())


def test_shared_subscription_shares_the_load_on_mqtt5(mosquitto):  # noqa: F811
    async def main():
        members = [MqttBus(mosquitto.url, version=5) for _ in range(3)]
        pub = MqttBus(mosquitto.url, version=5)
        changed = asyncio.Event()   # shared: the wait below looks at every member's inbox
        inboxes = [Inbox(changed=changed) for _ in members]
        for bus, inbox in zip(members, inboxes):
            await bus.connect()
            await bus.subscribe("work/+", inbox, qos=1, queue="workers")
        await pub.connect()
        for i in range(60):
            await pub.publish(f"work/{i % 4}", str(i).encode(), qos=1,
                              envelope=Envelope(headers=(("n", str(i)),)))

        def total(_):
            return sum(len(x.messages) for x in inboxes)

        await inboxes[0].wait_until(lambda i: total(i) >= 60, "60 deliveries in the group")
        got = Counter(p for x in inboxes for p in x.payloads)
        assert got == Counter(str(i).encode() for i in range(60))   # each exactly once
        assert sum(1 for x in inboxes if x.messages) >= 2          # and shared
        assert all(m.envelope.header("n") == m.payload.decode() for x in inboxes for m in x.messages)
        for bus in members + [pub]:
            await bus.close()

    run(main())


@pytest.mark.parametrize("kwargs, match", [
    ({"version": 3}, r"MQTT version must be 4 \(3\.1\.1\) or 5, not 3"),
    ({"session_expiry": 60}, r"session_expiry, receive_maximum and topic_aliases need MQTT 5"),
    ({"version": 5, "receive_maximum": 0}, r"receive_maximum must be a whole number from 1 to 65535, not 0"),
    ({"version": 5, "session_expiry": -1}, r"session_expiry must be a whole number from 0 to 4294967295"),
])
def test_mqtt5_options_are_checked(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MqttBus("mqtt://h", **kwargs)
    with pytest.raises(ConfigError, match=r"version in 'mqtt://h\?version=6' must be 3\.1\.1 or 5"):
        open_bus("mqtt://h?version=6")
    bus = open_bus("mqtt://h?version=5&session_expiry=60&receive_maximum=10")
    assert (bus.version, bus.session_expiry, bus.receive_maximum) == (5, 60, 10)
    assert open_bus("mqtt://h?version=3.1.1").version == 4


def test_topic_aliases_map_topics_right_and_survive_a_broker_kill(tmp_path):
    """With topic aliases on, the first 10 topics (Mosquitto's maximum) go out as two-byte
    aliases after their first message, the others in full; every message arrives on its own
    topic. QoS 1 messages unacknowledged when the broker is killed are sent again in full on
    the next connection (an alias does not outlive its connection), so the broker takes
    them without a protocol error and the last retained value of each topic is right."""
    broker = private_broker(tmp_path, "alias", max_inflight_messages=100)
    try:
        async def main():
            pub = MqttBus(broker.url, version=5, topic_aliases=50, reconnect_min=0.1,
                          reconnect_max=0.5)
            sub = MqttBus(broker.url)                     # 3.1.1: aliases are per connection
            await pub.connect()
            await sub.connect()
            assert pub.broker.topic_alias_maximum == 10
            inbox = Inbox()
            await sub.subscribe("alias/#", inbox, qos=1)
            topics = [f"alias/t{i}" for i in range(15)]
            for round_ in range(4):
                for qos in (0, 1):
                    for t in topics:
                        await pub.publish(t, f"{t} {round_} {qos}".encode(), qos=qos)
            await inbox.wait_until(lambda i: len(i.messages) == 120, "120 messages")
            assert all(m.payload.decode().split()[0] == m.topic for m in inbox.messages)
            assert pub.aliased_topics == 10
            assert pub.stats.reconnects == 0 and pub.broker.reason_code == 0
            await sub.close()

            # unacknowledged, aliased QoS 1 publishes, then the broker dies
            broker.pause()
            sending = asyncio.ensure_future(pub.publish_many(
                [(t, f"{t} last".encode()) for t in topics] * 2, qos=1, retain=True, timeout=30))
            deadline = asyncio.get_running_loop().time() + 10
            while pub.inflight_peak < 30:   # all 30 written, none acknowledged
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.01)
            broker.kill()
            results = await sending
            assert all(isinstance(r, BrokerUnavailable) for r in results)
            await asyncio.to_thread(broker.start)
            deadline = asyncio.get_running_loop().time() + 20
            while pub.inflight_count:         # sent again and acknowledged
                assert asyncio.get_running_loop().time() < deadline, pub.broker
                await asyncio.sleep(0.02)
            assert pub.broker.reason_code == 0       # no 0x94: nothing went out as a stale alias
            check = MqttBus(broker.url)
            retained = Inbox()
            await check.connect()
            await check.subscribe("alias/#", retained, qos=1)
            await retained.wait_until(lambda i: len({m.topic for m in i.messages}) == 15,
                                      "a retained message on each of the 15 topics")
            assert {m.topic: m.payload for m in retained.messages} == {
                t: f"{t} last".encode() for t in topics}
            await check.close()
            await pub.close()

        run(main(), timeout=60)
    finally:
        broker.stop()
