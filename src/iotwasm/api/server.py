"""Serve the management API inside the node's event loop (uvicorn).

Listening beyond the loopback interface needs TLS (a certificate and key) or an explicit
``allow_insecure``: tokens travel in headers, and a token on an open network in clear text is
a token given away. On first start the node gets an admin token, written with mode 0600 to
``<data>/admin.token``; nothing else ever shows a token's secret again, except the dashboard
link `iotwasm up` prints to the operator's own terminal (`ApiServer.dashboard_url`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Any
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from ..errors import ConfigError
from ..node.node import Node
from ..pipeline.http_ingest import node_server
from .anchors import AnchorPublisher
from .app import ApiContext, create_app
from .dashboard import PATH as DASHBOARD_PATH
from .security import TokenExpired

log = logging.getLogger("iotwasm.api")


@dataclass
class ApiSettings:
    listen: str = "127.0.0.1:8282"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allow_insecure: bool = False
    alert_interval_s: float = 1.0
    #: how often a node in a fleet publishes its audit anchor while the log grows
    anchor_interval_s: float = 60.0
    sample_interval_s: float = 1.0   # the dashboard's samples (api/live.py)

    @property
    def host_port(self) -> tuple[str, int]:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"--api {self.listen!r} must look like HOST:PORT")
        return host.strip("[]") or "127.0.0.1", int(port)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def check(self) -> None:
        host, _ = self.host_port
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        if not is_loopback(host) and not self.tls and not self.allow_insecure:
            raise ConfigError(f"the API would listen on {host}, beyond this machine, without TLS; give "
                              "--tls-cert/--tls-key, or --api-insecure to accept clear-text tokens")

    @property
    def url(self) -> str:
        host, port = self.host_port
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"{'https' if self.tls else 'http'}://{shown}:{port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ApiServer:
    def __init__(self, node: Node, settings: ApiSettings, fleet=None):
        """`fleet`: the node's FleetAgent when it is in a fleet (serves the /v1/fleet views)."""
        settings.check()
        self.node, self.settings = node, settings
        data = Path(node.config.data_dir)
        self.ctx = ApiContext(node, data, fleet)
        self.admin_token_file = self.ctx.security.ensure_admin(data)
        self.app = create_app(self.ctx)
        self._server: Any = None  # uvicorn.Server, imported when the API starts
        self._task: asyncio.Task | None = None
        self.anchors = AnchorPublisher(self.ctx.audit, fleet, settings.anchor_interval_s) if fleet else None

    @property
    def port(self) -> int:
        if self._server is not None and self._server.servers:
            return self._server.servers[0].sockets[0].getsockname()[1]
        return self.settings.host_port[1]

    @property
    def url(self) -> str:
        host, _ = self.settings.host_port
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"{'https' if self.settings.tls else 'http'}://{shown}:{self.port}"

    def dashboard_url(self, with_token: bool = True) -> str:
        """The web dashboard's address. With `with_token`, and when ``<data>/admin.token`` can
        be read and still names a working token, the token rides in the fragment
        (``#token=…``): browsers never send a fragment to the server, and the page moves it
        to the tab's session storage and out of the address bar at once."""
        base = self.url + DASHBOARD_PATH
        if not with_token:
            return base
        try:
            secret = (Path(self.node.config.data_dir) / "admin.token").read_text().strip()
            if not secret or self.ctx.security.authenticate(secret) is None:
                return base
        except (OSError, UnicodeDecodeError, TokenExpired):
            return base
        return f"{base}#token={quote(secret, safe='')}"

    async def start(self) -> None:
        import uvicorn

        host, port = self.settings.host_port
        kw: dict[str, Any] = {}
        if self.settings.tls:
            kw = {"ssl_certfile": str(self.settings.tls_cert), "ssl_keyfile": str(self.settings.tls_key)}
        config = uvicorn.Config(self.app, host=host, port=port, log_level="warning", lifespan="off",
                                timeout_graceful_shutdown=2, **kw)
        # Bind here, not in uvicorn: uvicorn answers a port in use with sys.exit(), and a
        # SystemExit raised in a task stops the whole event loop — the node with it.
        try:
            info = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                      flags=socket.AI_PASSIVE)[0]
            # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only when the
            # protocol says TCP, and without it every keep-alive answer waits ~40 ms (Nagle and
            # delayed ACKs)
            sock = socket.socket(info[0], socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(info[4])
            sock.listen(2048)  # listening now: a second node cannot bind the same port
        except OSError as e:
            raise ConfigError(f"API cannot listen on {self.settings.listen}: {e.strerror or e}") from None
        self._server = node_server(config)   # the node owns the signals
        self._task = asyncio.get_running_loop().create_task(self._serve(sock), name="api")
        for _ in range(500):
            if self._server.started or self._task.done():
                break
            await asyncio.sleep(0.01)
        if self._task.done():
            exc = self._task.exception()
            raise ConfigError(f"API cannot listen on {self.settings.listen}: {exc or 'exited'}")
        log.info("API listening on %s", self.url)
        self.ctx.alerts.interval_s = self.settings.alert_interval_s
        self.ctx.alerts.start()
        if self.anchors is not None:
            self.anchors.start()
        self.ctx.live.interval_s = self.settings.sample_interval_s
        self.ctx.live.start()

    async def _serve(self, sock: socket.socket) -> None:
        try:
            await self._server.serve(sockets=[sock])
        except SystemExit as e:  # never let uvicorn's exit reach the node's loop
            raise RuntimeError(f"the API server stopped (exit status {e.code})") from None

    async def stop(self, *, keep_policy: bool = False) -> None:
        """Stop serving. With `keep_policy` the node's load policy (tenants, signatures)
        stays in force: a node whose API could not start still refuses what it must;
        `close()` ends it."""
        await self.ctx.alerts.stop()
        if self.anchors is not None:
            await self.anchors.stop()
        await self.ctx.live.stop()
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5)
            except (asyncio.TimeoutError, asyncio.CancelledError, SystemExit, Exception):
                pass  # it failed to start or to stop: either way it no longer serves
        if not keep_policy:
            self.ctx.close()

    def close(self) -> None:
        self.ctx.close()
