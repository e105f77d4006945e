"""CoAP source against aiocoap's client: POST and PUT to a resource become messages on the
topic filled from the path, answered 2.04 once the route is through; wrong method, unknown
path, oversize payload and a stopping route answered with their codes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiocoap
import pytest

from iotwasm.node.manifests import ManifestError, parse_documents

from ports import free_port
from nodesite import started, wait_for, write


def free_udp_port() -> int:
    return free_port()  # free for UDP as well as TCP


def manifest(port: int, sink: str = "{store: {table: readings}}") -> str:
    return f"""
apiVersion: iotwasm.io/v1
kind: Route
metadata: {{name: co}}
spec:
  source:
    coap: {{bind: "127.0.0.1:{port}", path: "telemetry/{{device}}", topic: "coap/{{device}}/reading",
            ackTimeout: 2s, maxPayload: 200}}
  sinks: [{sink}]
"""


async def send(client, port: int, path: str, payload: bytes, code=aiocoap.POST):
    req = aiocoap.Message(code=code, uri=f"coap://127.0.0.1:{port}/{path}", payload=payload)
    return await asyncio.wait_for(client.request(req).response, 20)


def test_post_and_put_become_messages_answered_once_through(tmp_path: Path):
    mdir = tmp_path / "m"
    mdir.mkdir()
    port = free_udp_port()

    async def main():
        write(mdir, "co.yaml", manifest(port))
        node = await started(tmp_path, mdir)
        client = await aiocoap.Context.create_client_context()
        try:
            for i in range(20):
                resp = await send(client, port, f"telemetry/dev{i % 3}", b'{"n": %d}' % i,
                                  aiocoap.POST if i % 2 else aiocoap.PUT)
                assert resp.code == aiocoap.CHANGED
                # answered once through: the row is there when the answer is
                assert node.store.count("readings") == i + 1
            rows = node.store.query("readings", limit=100)
            assert sorted(r["payload"]["n"] for r in rows) == list(range(20))
            assert {r["topic"] for r in rows} == {"coap/dev0/reading", "coap/dev1/reading", "coap/dev2/reading"}
            assert (await send(client, port, "telemetry/dev0", b"", aiocoap.GET)).code == aiocoap.METHOD_NOT_ALLOWED
            assert (await send(client, port, "elsewhere/dev0", b"{}")).code == aiocoap.NOT_FOUND
            assert (await send(client, port, "telemetry/dev0", b"x" * 201)).code == aiocoap.REQUEST_ENTITY_TOO_LARGE
            src = node.routes["co"].connectors()["source"]
            assert src == {"kind": "coap", "health": "ok", "problem": None,
                           "counters": {"accepted": 20, "rejected": 2}}
            assert node.store.count("readings") == 20
        finally:
            await client.shutdown()
            await node.shutdown()

    asyncio.run(main())


def test_a_paused_source_answers_503_and_the_device_sends_again(tmp_path: Path):
    """While a route is being replaced (its source paused) a request is refused with 5.03 and
    Max-Age 1; once the source feeds the route again, the resend goes through."""
    mdir = tmp_path / "m"
    mdir.mkdir()
    port = free_udp_port()

    async def main():
        write(mdir, "co.yaml", manifest(port))
        node = await started(tmp_path, mdir)
        client = await aiocoap.Context.create_client_context()
        try:
            node.routes["co"].source.pause()     # as while the route is being replaced
            resp = await send(client, port, "telemetry/dev0", b"{}")
            assert resp.code == aiocoap.SERVICE_UNAVAILABLE and resp.opt.max_age == 1
            node.routes["co"].source.retarget(node.routes["co"].runner)
            assert (await send(client, port, "telemetry/dev0", b"{}")).code == aiocoap.CHANGED
        finally:
            await client.shutdown()
            await node.shutdown()

    asyncio.run(main())


def test_bad_configuration_is_one_line_naming_the_field():
    with pytest.raises(ManifestError) as e:
        parse_documents(manifest(5683).replace('bind: "127.0.0.1:5683"', 'bind: "nohost"'), "co.yaml")
    assert e.value.problems == ["co.yaml#1 (Route co) spec.source.coap.bind: must be host:port"]


def test_a_replaced_route_keeps_the_port_and_serves_its_new_path(tmp_path: Path):
    """Changing the source's path starts the new listener before the old one goes: both are on
    one server for the bind address, so the port is never given up in between."""
    mdir = tmp_path / "m"
    mdir.mkdir()
    port = free_udp_port()

    async def main():
        write(mdir, "co.yaml", manifest(port))
        node = await started(tmp_path, mdir)
        client = await aiocoap.Context.create_client_context()
        try:
            assert (await send(client, port, "telemetry/dev0", b'{"v": 1}')).code == aiocoap.CHANGED
            write(mdir, "co.yaml", manifest(port).replace('path: "telemetry/{device}"', 'path: "v2/{device}"'))
            assert await node.sync() == []
            assert (await send(client, port, "v2/dev0", b'{"v": 2}')).code == aiocoap.CHANGED
            assert (await send(client, port, "telemetry/dev0", b'{"v": 3}')).code == aiocoap.NOT_FOUND
            assert sorted(r["payload"]["v"] for r in node.store.query("readings")) == [1, 2]
        finally:
            await client.shutdown()
            await node.shutdown()

    asyncio.run(main())


class Reading:
    """An observable resource of a device: its state as JSON, observers told of each change."""

    def __init__(self):
        import aiocoap.resource

        outer = self
        self.value = 0

        class Resource(aiocoap.resource.ObservableResource):
            async def render_get(self, request):
                return aiocoap.Message(payload=b'{"v": %d}' % outer.value)

        self.resource = Resource()

    def set(self, value: int) -> None:
        self.value = value
        self.resource.updated_state()


class Device:
    """A CoAP server (aiocoap) on a free UDP port with one observable resource; stop and start
    again on the same port, forgetting its observers as a rebooted device does."""

    def __init__(self):
        self.port = free_udp_port()
        self.reading = Reading()

    async def start(self) -> None:
        import aiocoap.resource

        site = aiocoap.resource.Site()
        site.add_resource(["temp"], self.reading.resource)
        self.context = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", self.port),
                                                                   transports=["udp6"])

    async def stop(self) -> None:
        await self.context.shutdown()
        self.reading.resource._observations.clear()   # a rebooted device knows no observers


def observe_manifest(port: int, reregister: str = "1s") -> str:
    return f"""
apiVersion: iotwasm.io/v1
kind: Route
metadata: {{name: obs}}
spec:
  source:
    coap:
      observe: [{{name: boiler, url: "coap://127.0.0.1:{port}/temp"}}]
      reregister: {reregister}
      timeout: 1s
      topic: "coap/{{device}}/temp"
  sinks: [{{store: {{table: obs}}}}]
"""


def test_observe_a_remote_resource_and_register_again_after_its_restart(tmp_path: Path):
    mdir = tmp_path / "m"
    mdir.mkdir()

    async def main():
        dev = Device()
        await dev.start()
        write(mdir, "obs.yaml", observe_manifest(dev.port))
        node = await started(tmp_path, mdir)

        def seen():
            return [r["payload"]["v"] for r in reversed(node.store.query("obs", limit=1000))]

        try:
            await wait_for(lambda: seen() == [0], what="the registration's answer")
            for v in (1, 2, 3):
                dev.reading.set(v)
                await wait_for(lambda v=v: seen()[-1:] == [v], what=f"notification {v}")
            assert seen() == [0, 1, 2, 3]
            assert node.store.query("obs", limit=1)[0]["topic"] == "coap/boiler/temp"
            await dev.stop()
            dev.reading.value = 10
            await dev.start()          # back, without its observers
            await wait_for(lambda: seen()[-1:] == [10], what="registered again: the current value")
            dev.reading.set(11)
            await wait_for(lambda: seen()[-1:] == [11], what="notifications after the restart")
            src = node.routes["obs"].connectors()["source"]
            assert src["health"] == "ok" and src["counters"]["registrations"] >= 2
        finally:
            await node.shutdown()
            await dev.stop()

    asyncio.run(main())


def test_observe_configuration_is_checked():
    text = observe_manifest(5683).replace("reregister: 1s", 'reregister: 1s\n      path: "x/{device}"')
    with pytest.raises(ManifestError) as e:
        parse_documents(text, "obs.yaml")
    assert e.value.problems == ["obs.yaml#1 (Route obs) spec.source.coap: observe makes the source a client: "
                                "path does not apply"]
