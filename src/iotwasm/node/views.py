"""What a `Node` shows of itself: its published status, its storage problems, its snapshot
(a mixin of `Node`, which sets the state these read)."""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

from ..errors import IotwasmError
from .traffic import traffic_view

if TYPE_CHECKING:
    from ..messaging.bus import Bus
    from ..pipeline import Outbox
    from .deployments import DeploymentRecord
    from .node import NodeConfig
    from .routes import RouteRecord
    from .rules import NodeRules
    from .state import NodeState

log = logging.getLogger("iotwasm.node")


def status_topic(node: str) -> str:
    """Where node `node` publishes its retained status (and its last will)."""
    return f"iotwasm/nodes/{node}/status"


class NodeViews:
    """The node's status, storage problems and snapshot (a mixin of `Node`)."""

    # the node's state these methods read (set in Node.__init__)
    config: NodeConfig
    bus: Bus | None
    started: float
    ready: bool
    deployments: dict[str, DeploymentRecord]
    routes: dict[str, RouteRecord]
    rules: NodeRules | None
    state: NodeState
    outbox: Outbox
    last_manifest_error: str | None

    @property
    def status_topic(self) -> str:
        return status_topic(self.config.name)

    async def _publish_status(self, state: str, reason: str = "") -> None:
        if self.bus is None:
            return
        body = {"node": self.config.name, "state": state, "started": self.started, "time": time.time(),
                "deployments": {n: str(r.handle.current.state) for n, r in self.deployments.items()},
                "routes": list(self.routes)}
        storage = self.storage_problems()
        if storage:
            body["storage"] = storage
        if reason:
            body["reason"] = reason
        try:
            await self.bus.publish(self.status_topic, json.dumps(body).encode(), qos=1, retain=True)
        except IotwasmError as e:
            log.debug("status not published: %s", e)

    def storage_problems(self) -> list[str]:
        """What is held because the storage fails, and why (one line each, naming the file and
        the reason); empty when every write goes through."""
        out = []
        for name, rec in self.routes.items():
            if rec.runner.storage.error is not None:
                out.append(f"route {name} holds messages: {rec.runner.storage.error}")
            for sink in rec.sinks:
                fwd = getattr(sink, "forwarder", None)
                if fwd is not None and fwd.storage.error is not None:
                    out.append(f"outbox forwarder {sink.name} cannot delete delivered messages: {fwd.storage.error}")
        if self.rules is not None:
            out += self.rules.runner.storage_problems()
        if self.state.write_error is not None:
            out.append(f"events not recorded: {self.state.write_error}")
        return out

    def snapshot(self) -> dict:
        deps = {}
        for name, rec in self.deployments.items():
            st = rec.handle.current.stats()
            deps[name] = {"state": st.state, "revision": rec.handle.revision, "replicas": st.replicas,
                          "module": rec.module_digest, "restarts": st.restarts,
                          "rollbacks": rec.handle.rollbacks, **st.totals(), "last_error": st.last_error,
                          "min_replicas": st.min_replicas, "max_replicas": st.max_replicas,
                          "evictions": st.scaling.evictions}
        routes = {}
        for name, route_rec in self.routes.items():
            s = route_rec.runner.stats
            routes[name] = {"received": s.received, "delivered": s.delivered, "dead_letters": s.dead_letters,
                            "dropped": s.dropped, "acl_denied": s.acl_denied, "queued": route_rec.runner.depth(),
                            "p50_ms": round(s.percentile(0.5), 3), "p99_ms": round(s.percentile(0.99), 3),
                            "backlog": sum(getattr(k, "backlog", lambda: 0)() for k in route_rec.sinks),
                            **traffic_view(route_rec.runner, route_rec.sinks)}
        return {"node": self.config.name, "ready": self.ready, "deployments": deps, "routes": routes,
                "rules": self.rules.status() if self.rules is not None else {},
                "outbox_backlog": self.outbox.backlog(), "manifest_error": self.last_manifest_error,
                "storage": self.storage_problems()}
