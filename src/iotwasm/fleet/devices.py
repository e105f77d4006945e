"""Device twins in a fleet: each node mirrors the twins its own registry holds (node/devices.py)
into the JetStream KV bucket ``iotwasm-devices``, so that any node's API shows every device of
the fleet and which node hears it (``GET /v1/fleet/devices``).

The node's SQLite registry stays the one a node works from: twins, reports, desired state and
commands go on while the fleet link is down, as everything else on a node does. A change is
queued here (one entry per device, the newest replacing an older one not yet sent), sent once
the link is up, and everything the node holds is sent again after each (re)connect, so a copy
that missed changes while the link was down is brought up to date. The key is
``<namespace>.<device>`` (a ``:`` of the device id written ``=``, which no id contains); the
value is the twin with ``node``, the node that wrote it, and ``mirrored``, when.

Desired state changed in the fleet view is not applied to nodes: a device's desired state is
set through the node that hears it (docs/devices.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from ..node.devices import Twin

if TYPE_CHECKING:
    from .agent import FleetAgent

log = logging.getLogger("iotwasm.fleet.devices")

#: twins read from the local registry per page when everything is sent again
PAGE = 500


def twin_key(namespace: str, device: str) -> str:
    return f"{namespace}.{device.replace(':', '=')}"


class DeviceMirror:
    """Sends the node's twin changes to the fleet bucket (see the module's docstring)."""

    def __init__(self, agent: FleetAgent, retry_s: float = 1.0):
        self.agent = agent
        self.retry_s = retry_s
        self._pending: dict[str, dict] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._synced_link: object = None   # the connection everything was last sent over
        self._reconnects = -1
        #: twins written to the fleet bucket (for tests and the node's view)
        self.sent = 0

    def changed(self, twin: Twin) -> None:
        """The node's registry changed `twin` (called on the event loop)."""
        doc = twin.to_dict()
        doc.update(node=self.agent.id, mirrored=time.time())
        self._pending[twin_key(twin.namespace, twin.device)] = doc
        self._wake.set()

    def start(self) -> None:
        self.agent.node.device_link.listeners.append(self.changed)
        self._task = asyncio.create_task(self._run(), name=f"device-mirror-{self.agent.id}")

    async def stop(self) -> None:
        if self.changed in self.agent.node.device_link.listeners:
            self.agent.node.device_link.listeners.remove(self.changed)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            store = self.agent.store
            if store is not None and store.connected:
                try:
                    reconnects = store.nc.stats.get("reconnects", 0)
                    if store.nc is not self._synced_link or reconnects != self._reconnects:
                        await self._everything()
                        self._synced_link, self._reconnects = store.nc, reconnects
                    while self._pending:
                        key, doc = next(iter(self._pending.items()))
                        await store.put_twin(key, doc)
                        if self._pending.get(key) is doc:   # not changed again meanwhile
                            del self._pending[key]
                        self.sent += 1
                except asyncio.CancelledError:
                    raise
                except Exception as e:   # the link dropped: kept, sent again later
                    log.debug("device twins not mirrored yet: %s: %s", type(e).__name__, e)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.retry_s)
            except TimeoutError:
                pass

    async def _everything(self) -> None:
        """Queue every twin the node holds (after a (re)connect)."""
        registry = self.agent.node.devices
        after: tuple[str, str] | None = None
        while True:
            page = await asyncio.to_thread(registry.twins, after=after, limit=PAGE)
            for t in page:
                key = twin_key(t.namespace, t.device)
                if key not in self._pending:
                    doc = t.to_dict()
                    doc.update(node=self.agent.id, mirrored=time.time())
                    self._pending[key] = doc
            if len(page) < PAGE:
                return
            after = (page[-1].namespace, page[-1].device)
