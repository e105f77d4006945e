"""A real node with its management API on free ports, run in a background thread (its own
event loop), for tests that talk to it over HTTP like any client would."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import wasmtime

from brokers import free_port
from conftest import ECHO_WAT
from iotwasm.api import ApiServer, ApiSettings
from iotwasm.node import Node, NodeConfig

ECHO_WASM = bytes(wasmtime.wat2wasm(ECHO_WAT))


class ApiNode:
    """`fleet`: FleetAgent keyword arguments (url, labels, …) to run the node in a fleet."""

    def __init__(self, tmp: Path, manifests: Path | None = None, fleet: dict | None = None,
                 name: str = "testnode", node_config: dict | None = None, **settings):
        """`node_config`: more NodeConfig fields; `settings`: more ApiSettings fields
        (anchor_interval_s, …)."""
        self.tmp = tmp
        self.fleet = fleet
        self.settings = settings
        self.agent = None
        self.data = tmp / "data"
        self.ingest_port = free_port()
        self.config = NodeConfig(data_dir=self.data, manifests=manifests, sync_interval_s=0.05,
                                 http=f"127.0.0.1:{self.ingest_port}", name=name, **(node_config or {}))
        self.node: Node | None = None
        self.server: ApiServer | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as e:  # surfaced by start()
            self._error = e
            self._ready.set()
        finally:  # what clients left behind (NATS subscriptions' tasks) ends with the loop
            left = asyncio.all_tasks(self.loop)
            for t in left:
                t.cancel()
            self.loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))

    async def _main(self) -> None:
        self.node = Node(self.config)
        if self.fleet is not None:
            from iotwasm.fleet import FleetAgent

            self.agent = FleetAgent(self.node, **self.fleet)
        self.server = ApiServer(self.node, ApiSettings(f"127.0.0.1:{free_port()}", alert_interval_s=0.05,
                                                       **self.settings), fleet=self.agent)
        await self.server.start()
        task = asyncio.create_task(self.node.run())
        while not self.node.ready and not task.done():
            await asyncio.sleep(0.01)
        if self.agent is not None:
            self.agent.start()
        self._ready.set()
        try:
            await task
        finally:
            if self.server.anchors is not None:
                await self.server.anchors.stop()   # the last anchor, while the fleet link is up
            if self.agent is not None:
                await self.agent.stop()
            await self.server.stop()

    def start(self) -> "ApiNode":
        self._thread.start()
        self._ready.wait(30)
        if self._error:
            raise self._error
        self.url = self.server.url
        self.admin_token = (self.data / "admin.token").read_text().strip()
        return self

    def stop(self) -> None:
        if self.node is not None:
            self.loop.call_soon_threadsafe(self.node.stop)
        self._thread.join(30)

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    @property
    def admin(self) -> httpx.Client:
        return self.client(self.admin_token)

    def token(self, role: str, tenant: str | None = None, name: str = "t") -> str:
        r = self.admin.post("/v1/tokens", json={"name": name, "role": role, "tenant": tenant})
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def ingest(self, path: str, device: str, payloads: list[bytes], timeout: float = 10) -> None:
        """POST each payload; each must be acknowledged (202: its route is through with it)."""
        with httpx.Client(timeout=timeout) as c:
            for p in payloads:
                r = c.post(f"http://127.0.0.1:{self.ingest_port}{path}?device={device}", content=p)
                assert r.status_code == 202, r.text


def wait_for(cond, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def push(client, wasm=ECHO_WASM, **params):
    """Push a module to the node as `client` (POST /v1/modules); the response, whatever it is."""
    return client.post("/v1/modules", content=wasm, params=params, headers={"Content-Type": "application/wasm"})


def apply(client, text):
    """Apply manifests as `client` (POST /v1/apply); the response, whatever it is."""
    return client.post("/v1/apply", content=text, headers={"Content-Type": "application/yaml"})


def deployment(name: str, module: str, namespace: str = "default", replicas: int = 1,
               publish: str = "#", subscribe: str = "#", memory: str = "16Mi", host: str = "log") -> str:
    return f"""apiVersion: iotwasm.io/v1
kind: Deployment
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  module: "{module}"
  replicas: {replicas}
  resources: {{memory: {memory}}}
  capabilities: {{host: [{host}], topics: {{publish: ["{publish}"], subscribe: ["{subscribe}"]}}}}
  updateStrategy: {{healthGate: {{messages: 1}}}}
"""


def http_route(name: str, step: str, path: str, topic: str, table: str, namespace: str = "default",
               dead_letter: str = "deadletter/{route}") -> str:
    return f"""apiVersion: iotwasm.io/v1
kind: Route
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  source: {{http: {{path: "{path}", topic: "{topic}"}}}}
  steps: [{step}]
  sinks: [{{store: {{table: {table}}}}}]
  deadLetter: "{dead_letter}"
  batch: {{maxSize: 10, maxLinger: 1ms}}
"""
