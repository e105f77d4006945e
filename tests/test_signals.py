"""The node owns SIGINT and SIGTERM: its HTTP servers (the API and the ingest server, both on
uvicorn) must not replace the handlers while they serve. uvicorn's `serve()` does, in the main
thread, and raises the signal again when it stops — so a Ctrl-C would stop the API before the
node drained its routes, and a second Ctrl-C would meet Python's default handler. The servers
run here in the main thread, as `iotwasm up` runs them."""

from __future__ import annotations

import asyncio
import signal

import httpx

from brokers import free_port
from iotwasm.api.server import ApiServer, ApiSettings
from iotwasm.node import Node, NodeConfig
from iotwasm.pipeline.http_ingest import IngestServer

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def handlers() -> dict:
    return {s: signal.getsignal(s) for s in SIGNALS}


def test_the_http_servers_leave_the_signal_handlers_alone_while_they_serve(tmp_path):
    async def main():
        loop = asyncio.get_running_loop()
        stops: list[int] = []
        for s in SIGNALS:                     # as `iotwasm up` does
            loop.add_signal_handler(s, stops.append, s)
        before = handlers()
        node = Node(NodeConfig(data_dir=tmp_path / "data", sync_interval_s=0.05))
        api = ApiServer(node, ApiSettings(f"127.0.0.1:{free_port()}"))
        ingest = IngestServer("127.0.0.1", free_port())
        await api.start()
        await ingest.start()
        await node.start()
        try:
            async with httpx.AsyncClient() as c:   # both are serving
                assert (await c.get(f"{api.url}/healthz")).status_code == 200
            during = handlers()
        finally:
            await ingest.stop()
            await api.stop()
            await node.shutdown()
        after = handlers()
        for s in SIGNALS:
            loop.remove_signal_handler(s)
        assert during == before, "a server replaced the node's signal handlers while serving"
        assert after == before
        assert stops == []                    # and re-raised nothing when it stopped

    asyncio.run(main())
