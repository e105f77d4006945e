"""A node in a fleet publishes its audit log's anchor to JetStream (``iotwasm-audit-anchors``,
key: the node's id) when it starts, every `interval_s` while the log grows, and when it stops,
so the log's head is kept off the node's disk: rows cut from the end of ``audit.db``, or all
of them, no longer verify against the fleet's copy (``iotwasm audit verify --anchor
nats://…``). A fleet link that is down only delays a publication."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import nats.errors

from ..errors import IotwasmError
from .audit import AuditLog

log = logging.getLogger("iotwasm.api")


class AnchorPublisher:
    def __init__(self, audit: AuditLog, agent: Any, interval_s: float = 60.0):
        self.audit, self.agent, self.interval_s = audit, agent, interval_s
        self._published: tuple[int, str] | None = None
        self._task: asyncio.Task | None = None

    async def publish(self) -> bool:
        """Publish the anchor now if the log moved since the last one; whether it did."""
        store = self.agent.store
        if store is None or not store.connected:
            return False
        record = await self.audit.run(self.audit.anchor, self.agent.id)
        if (record["seq"], record["head"]) == self._published:
            return False
        try:
            await asyncio.wait_for(store.put_audit_anchor(self.agent.id, record), 5)
        except (TimeoutError, OSError, IotwasmError, nats.errors.Error) as e:   # the link: try again later
            log.warning("audit anchor not published to the fleet: %s", e or type(e).__name__)
            return False
        self._published = (record["seq"], record["head"])
        return True

    async def _loop(self) -> None:
        while True:
            await self.publish()
            # until the first one is out (the fleet link comes up after the API), look every second
            await asyncio.sleep(self.interval_s if self._published else min(1.0, self.interval_s))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="audit-anchors")

    async def stop(self) -> None:
        """Publish the last anchor (when the link is still up) and stop; again: nothing."""
        if self._task is None:
            return
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        await self.publish()
