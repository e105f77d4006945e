"""A route with an http ingest source on a node: posts become messages on the route's topic, a
port something else listens on is the route's problem (not the end of the node), and a body
past the 1 MiB cap is refused while it arrives."""

from __future__ import annotations

import asyncio
import json

from iotwasm.node import Node, NodeConfig

from brokers import free_port
from nodesite import deployment, route, wait_for, write
from nodesite import site as site  # the fixture, re-exported so that the tests' parameter shadows no unused import


HTTP_ROUTE = route("web", "echo", "web").replace(
    'source: {bus: {topic: "in/{device}"}}', 'source: {http: {path: /ingest, topic: "in/{device}"}}')


def test_http_ingest_source(site):
    import urllib.request

    tmp, mdir = site
    port = free_port()
    http_route = HTTP_ROUTE

    def post(path: str, body: bytes, ctype: str = "application/json") -> tuple[int, dict]:
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", body, {"Content-Type": ctype})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    async def main():
        write(mdir, "a.yaml", deployment("echo", str(tmp / "echo.wat")) + "---" + http_route)
        node = Node(NodeConfig(data_dir=tmp / "data", manifests=mdir, http=f"127.0.0.1:{port}"))
        await node.start()
        try:
            assert await asyncio.to_thread(post, "/ingest?device=d1", b'{"t": 1}') == (202, {"accepted": 1})
            assert await asyncio.to_thread(post, "/ingest?device=d2", b'[{"t": 2}, {"t": 3}]') == (202, {"accepted": 2})
            assert (await asyncio.to_thread(post, "/ingest", b"{}"))[0] == 400  # no device for the topic
            assert (await asyncio.to_thread(post, "/nowhere?device=x", b"{}"))[0] == 404
            assert (await asyncio.to_thread(post, "/ingest?device=d1", b"{oops"))[0] == 400
            await wait_for(lambda: node.store.count("web") == 3, what="3 rows from http")
            rows = node.store.query("web", limit=10)
            assert sorted(r["topic"] for r in rows) == ["in/d1", "in/d2", "in/d2"]
        finally:
            await node.shutdown()

    asyncio.run(main())


def test_http_source_on_a_taken_port_is_a_route_problem_not_the_end_of_the_node(site):
    """Something else listens on the ingest port: the http route cannot start and says why;
    the node (and its other routes) runs on."""
    import socket

    tmp, mdir = site
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    http_route = HTTP_ROUTE

    async def main():
        write(mdir, "a.yaml", deployment("echo", str(tmp / "echo.wat")) + "---" + http_route
              + "---" + route("local", "echo", "local"))
        node = Node(NodeConfig(data_dir=tmp / "data", manifests=mdir, http=f"127.0.0.1:{port}"))
        await node.start()
        try:
            [problem] = node.last_problems
            assert problem.startswith("Route web: http ingest cannot listen on 127.0.0.1:") \
                and "in use" in problem, problem
            assert "local" in node.routes and "web" not in node.routes
            await node.bus.publish("in/d1", b'{"t": 1}')
            await wait_for(lambda: node.store.count("local") == 1, what="the other route working")
            assert any(e["kind"] == "failed" for e in node.state.events("web"))
        finally:
            await node.shutdown()
            taken.close()

    asyncio.run(main())


def test_http_ingest_refuses_an_oversized_body_while_it_arrives(site):
    """The 1 MiB cap applies while the body streams in: a client that keeps sending gets 413
    once it is past the cap, without the node waiting for (or keeping) the rest."""
    import socket

    tmp, mdir = site
    port = free_port()
    http_route = HTTP_ROUTE

    def endless_upload() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as c:
            c.sendall(b"POST /ingest?device=d1 HTTP/1.1\r\nHost: x\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n")
            chunk = b"x" * 65536
            for _ in range(20):  # 1.25 MiB of body, and no end of it
                c.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            return c.recv(200)

    async def main():
        write(mdir, "a.yaml", deployment("echo", str(tmp / "echo.wat")) + "---" + http_route)
        node = Node(NodeConfig(data_dir=tmp / "data", manifests=mdir, http=f"127.0.0.1:{port}"))
        await node.start()
        try:
            head = await asyncio.to_thread(endless_upload)
            assert head.startswith(b"HTTP/1.1 413"), head
            assert node.store.count("web") == 0
        finally:
            await node.shutdown()

    asyncio.run(main())
