"""The API's read-only fleet views: the fleet this node belongs to, its nodes and deployments.

They are read through the node's own fleet link (the `FleetAgent`'s connection), so asking costs
no extra connection and shows what this node can see. The fleet is shared by every tenant of
every node, so the views are for tokens without tenant (node operators); a tenant token is
refused (403). A node not started with ``--fleet`` answers 404; a link that is down, or a server
that does not answer within `ApiContext.fleet_timeout_s`, answers 503 at once.
"""

from __future__ import annotations

from typing import Callable

from fastapi import Depends, FastAPI

from ..fleet.status import FleetUnavailable, FleetView
from .policy import PolicyError
from .security import Principal

NOT_FOUND = {404: {"description": "this node is not in a fleet"}}
UNAVAILABLE = {503: {"description": "the fleet link is down or the server did not answer in time"}}


def install(app: FastAPI, ctx, *, viewer: Callable, deny: Callable) -> None:
    """Add the /v1/fleet routes to `app`; `ctx.fleet` is the node's FleetAgent (or None)."""
    from .app import Problem

    async def view(who: Principal, what: str) -> FleetView:
        if who.tenant is not None:
            deny(who, "fleet.read", what, PolicyError("fleet views are for tokens without tenant "
                                                      "(the fleet is shared by every tenant)"))
        agent = ctx.fleet
        if agent is None:
            raise Problem(404, "Not found", "this node is not in a fleet (start it with iotwasm up --fleet)",
                          "not-in-fleet")
        try:
            return await FleetView.read(agent.store, agent.url, ctx.fleet_timeout_s)
        except FleetUnavailable as e:
            raise Problem(503, "Fleet unavailable", f"{e}; this node keeps running its last assignment",
                          e.kind, extra={"url": agent.url, "node": agent.id, "connected": False}) from None

    @app.get("/v1/fleet", tags=["fleet"], summary="The fleet this node is in: counts and problems",
             responses={**NOT_FOUND, **UNAVAILABLE})
    async def fleet_summary(who: Principal = Depends(viewer)) -> dict:
        v = await view(who, "fleet")
        agent = ctx.fleet
        return {"url": agent.url, "connected": True, "node": agent.id,
                "assignment_revision": agent.applied_revision, **v.summary()}

    @app.get("/v1/fleet/nodes", tags=["fleet"], summary="Live nodes of the fleet (as `iotwasm nodes` shows them)",
             responses={**NOT_FOUND, **UNAVAILABLE})
    async def fleet_nodes(who: Principal = Depends(viewer)) -> list[dict]:
        return (await view(who, "fleet/nodes")).node_rows()

    @app.get("/v1/fleet/deployments", tags=["fleet"],
             summary="Fleet deployments with placement, revision and where they are assigned and run",
             responses={**NOT_FOUND, **UNAVAILABLE})
    async def fleet_deployments(who: Principal = Depends(viewer)) -> list[dict]:
        return (await view(who, "fleet/deployments")).deployment_rows()
