"""The API's fleet views — the fleet this node belongs to, its nodes, deployments and rollouts —
and the operator's rollout controls (pause, resume, abort).

They are read through the node's own fleet link (the `FleetAgent`'s connection), so asking costs
no extra connection and shows what this node can see. The fleet is shared by every tenant of
every node, so the views are for tokens without tenant (node operators); a tenant token is
refused (403). A node not started with ``--fleet`` answers 404; a link that is down, or a server
that does not answer within `ApiContext.fleet_timeout_s`, answers 503 at once.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query

from ...errors import IotwasmError
from ...fleet.rollout import NoRollout, RolloutStateError
from ...fleet.status import FleetUnavailable, FleetView
from ..context import ApiContext
from ..deps import Ctx, Role
from ..guard import GuardedRoute
from ..openapi import errors
from ..problems import Problem, not_found
from ..security import Principal

NOT_FOUND = errors(404, why_404="this node is not in a fleet")
UNAVAILABLE = errors(503, why_503="the fleet link is down or the server did not answer in time")


SHARED = "fleet views are for tokens without tenant (the fleet is shared by every tenant)"
FleetViewer = Annotated[Principal, Depends(Role("viewer", without_tenant=SHARED))]
FleetOperator = Annotated[Principal, Depends(Role("operator", without_tenant=SHARED))]

router = APIRouter(tags=["fleet"], route_class=GuardedRoute)


def _member(ctx: ApiContext) -> Any:
    if ctx.fleet is None:
        raise Problem(404, "Not found", "this node is not in a fleet (start it with iotwasm up --fleet)",
                      "not-in-fleet")
    return ctx.fleet


async def _view(ctx: ApiContext) -> FleetView:
    agent = _member(ctx)
    try:
        return await FleetView.read(agent.store, agent.url, ctx.fleet_timeout_s)
    except FleetUnavailable as e:
        raise Problem(503, "Fleet unavailable", f"{e}; this node keeps running its last assignment",
                      e.kind, extra={"url": agent.url, "node": agent.id, "connected": False}) from None


@router.get("/v1/fleet", summary="The fleet this node is in: counts and problems",
            responses={**NOT_FOUND, **UNAVAILABLE})
async def fleet_summary(ctx: Ctx, who: FleetViewer) -> dict:
    v = await _view(ctx)
    agent = ctx.fleet
    return {"url": agent.url, "connected": True, "node": agent.id,
            "assignment_revision": agent.applied_revision, **v.summary()}


@router.get("/v1/fleet/nodes", summary="Live nodes of the fleet (as `iotwasm nodes` shows them)",
            responses={**NOT_FOUND, **UNAVAILABLE})
async def fleet_nodes(ctx: Ctx, who: FleetViewer) -> list[dict]:
    return (await _view(ctx)).node_rows()


@router.get("/v1/fleet/deployments",
            summary="Fleet deployments with placement, revision and where they are assigned and run",
            responses={**NOT_FOUND, **UNAVAILABLE})
async def fleet_deployments(ctx: Ctx, who: FleetViewer) -> list[dict]:
    return (await _view(ctx)).deployment_rows()


@router.get("/v1/fleet/rollouts",
            summary="Rollouts of fleet deployments: state, stage, updated and failed nodes, history",
            responses={**NOT_FOUND, **UNAVAILABLE})
async def fleet_rollouts(ctx: Ctx, who: FleetViewer) -> list[dict]:
    return (await _view(ctx)).rollout_records()


@router.get("/v1/fleet/devices",
            summary="Device twins of the whole fleet, each with the node that hears it (docs/devices.md)",
            responses={**NOT_FOUND, **UNAVAILABLE})
async def fleet_devices(ctx: Ctx, who: FleetViewer, limit: int = Query(1000, ge=1, le=10_000)) -> list[dict]:
    agent = _member(ctx)
    store = agent.store
    if store is None or not store.connected:
        raise Problem(503, "Fleet unavailable", f"fleet {agent.url}: the link is down (reconnecting in the "
                      "background)", FleetUnavailable.kind)
    try:
        return await asyncio.wait_for(store.twins(limit), ctx.fleet_timeout_s)
    except TimeoutError:
        raise Problem(503, "Fleet unavailable", f"fleet {agent.url}: no answer within "
                      f"{ctx.fleet_timeout_s:g} s", FleetUnavailable.kind) from None
    except Exception as e:   # the link dropped mid-read: the same answer as a link that is down
        raise Problem(503, "Fleet unavailable", f"fleet {agent.url}: {type(e).__name__}: {e}".rstrip(": "),
                      FleetUnavailable.kind) from None


@router.post("/v1/fleet/rollouts/{name}/{action}",
             summary="Pause, resume or abort the rollout of a fleet deployment (operator)",
             responses={**NOT_FOUND, **UNAVAILABLE,
                        **errors(409, why_409="the rollout is not in a state the action applies to")})
async def fleet_rollout_control(name: str, action: Literal["pause", "resume", "abort"], ctx: Ctx,
                                who: FleetOperator) -> dict:
    await _view(ctx)     # the same checks: in a fleet, link up
    agent = _member(ctx)
    try:
        r = await asyncio.wait_for(agent.store.control_rollout(name, action, who=who.actor), ctx.fleet_timeout_s)
    except TimeoutError:
        raise Problem(503, "Fleet unavailable", f"fleet {agent.url}: no answer within "
                      f"{ctx.fleet_timeout_s:g} s", FleetUnavailable.kind) from None
    except NoRollout as e:
        raise not_found(str(e)) from None
    except (RolloutStateError, IotwasmError) as e:   # not applicable, or the record kept changing
        raise Problem(409, "Conflict", str(e), "conflict") from None
    await ctx.record(who, f"fleet.rollout.{action}", f"fleet/rollouts/{name}", f"revision {r.revision}: {r.state}")
    return {"deployment": name, "revision": r.revision, "state": r.state, "reason": r.reason}
