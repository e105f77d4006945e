"""The dashboard's live feed: one server-sent event stream per open page, and the sample
history it starts from.

``GET /v1/stream`` is read with ``fetch`` (the token stays in the Authorization header, never
in a URL). It carries, in this order: ``hello`` (who you are, the sample interval, whether
fleet views will follow), ``history`` (the kept samples), the latest ``sample``, then each new
``sample`` as it is taken, each node ``event`` as it happens and, for tokens without tenant on
a node in a fleet, a ``fleet`` view every couple of seconds. Everything is cut to what the
token may see: a tenant's stream holds its namespace's routes, deployments, rules and events
only (node-wide numbers — CPU, memory, outbox backlog — are everyone's). The token is checked
again at every sample: a revoked or expired one gets an ``end`` event and the stream closes.

A follower too slow to keep up misses samples (its queue is bounded); the page shows the
gap. At most `MAX_STREAMS` streams are open at once (429 beyond).
"""

from __future__ import annotations

import json

from ..fleet.status import FleetUnavailable, FleetView

#: open streams per node
MAX_STREAMS = 32
#: items waiting for one slow follower before it misses some
QUEUE = 256
#: a comment line this often keeps proxies from closing a quiet stream
KEEPALIVE_S = 15.0


def sse(kind: str, doc: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps(doc, separators=(',', ':'))}\n\n"


async def read_fleet(ctx) -> dict:
    """The fleet as the page shows it (the /v1/fleet views in one document), or why not."""
    agent = ctx.fleet
    try:
        v = await FleetView.read(agent.store, agent.url, ctx.fleet_timeout_s)
    except FleetUnavailable as e:
        return {"error": f"{e}; this node keeps running its last assignment", "url": agent.url,
                "node": agent.id, "connected": False}
    return {"summary": {"url": agent.url, "connected": True, "node": agent.id,
                        "assignment_revision": agent.applied_revision, **v.summary()},
            "nodes": v.node_rows(), "deployments": v.deployment_rows(), "rollouts": v.rollout_records()}
