"""Threshold alert rules on node metrics: listed for every viewer (a tenant sees the rules
about its own routes and deployments), set and deleted by operators without tenant."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from ...node.bounded_yaml import excerpt
from ...node.manifests import NAME
from ..alerts import METRICS, AlertRule
from ..context import ApiContext
from ..deps import Ctx, Role, Viewer
from ..guard import GuardedRoute
from ..policy import namespace_of
from ..problems import invalid, not_found
from ..security import Principal

router = APIRouter(tags=["alerts"], route_class=GuardedRoute)


class AlertBody(BaseModel):
    metric: Literal[METRICS]  # type: ignore[valid-type]
    above: float = Field(allow_inf_nan=False)
    target: str | None = Field(None, max_length=63, description="route or deployment name")
    cooldown_s: float = Field(300.0, ge=0, le=7 * 86400)
    topic: str | None = Field(None, min_length=1, max_length=200, pattern=r"^[^#+]+$")
    webhook: str | None = Field(None, pattern=r"^https?://", max_length=2000)


def alert_view(ctx: ApiContext, r: AlertRule) -> dict:
    state = ctx.alerts._state.get(r.name)
    return {**r.config(), "fired": state.fired if state else 0,
            "last_fired": state.last_fired if state else None}


@router.get("/v1/alerts", summary="Threshold alert rules and how often they fired")
async def list_alerts(ctx: Ctx, who: Viewer) -> list[dict]:
    node = ctx.node
    rules = ctx.alert_rules.all()
    if who.tenant is not None:
        rules = [r for r in rules if r.target and (namespace_of(node, "Route", r.target) == who.tenant
                                                   or namespace_of(node, "Deployment", r.target) == who.tenant)]
    return [alert_view(ctx, r) for r in rules]


#: alert rules are set by node operators
NodeOperator = Annotated[Principal, Depends(Role("operator", without_tenant="alert rules are set by node operators "
                                                                         "(tokens without tenant)"))]


@router.put("/v1/alerts/{name}", summary="Create or change an alert rule (operator without tenant)")
async def put_alert(name: str, body: AlertBody, ctx: Ctx, who: NodeOperator) -> dict:
    if not NAME.match(name):
        raise invalid(f"alert name {excerpt(name, quote=True)}: lowercase letters, digits and '-'")
    if body.metric != "outbox_backlog" and not body.target:
        raise invalid(f"metric {body.metric} needs a target")
    if not body.topic and not body.webhook:
        raise invalid("an alert needs a topic, a webhook or both")
    rule = AlertRule(name=name, **body.model_dump())
    await asyncio.to_thread(ctx.alert_rules.put, rule)   # api.db syncs every commit: off the loop
    await ctx.record(who, "alert.put", f"alert/{name}", json.dumps(rule.config()))
    return alert_view(ctx, rule)


@router.delete("/v1/alerts/{name}", summary="Delete an alert rule (operator without tenant)")
async def delete_alert(name: str, ctx: Ctx, who: NodeOperator) -> dict:
    if not await asyncio.to_thread(ctx.alert_rules.delete, name):
        raise not_found(f"no alert rule {excerpt(name, quote=True)}")
    await ctx.record(who, "alert.delete", f"alert/{name}")
    return {"deleted": name}
