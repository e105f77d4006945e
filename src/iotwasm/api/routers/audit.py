"""The audit log: query it (newest first; a tenant admin sees its own tenant's rows only),
verify its hash chain — against an anchor kept elsewhere, too — and take an anchor. The chain
and its anchors cover every tenant's rows together, so verifying and anchoring are for admin
tokens without tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from ...sqlite import MAX_INTEGER
from ..deps import Admin, Ctx, Role
from ..guard import GuardedRoute
from ..problems import invalid
from ..security import Principal

router = APIRouter(tags=["audit"], route_class=GuardedRoute)

NodeAdmin = Annotated[Principal, Depends(Role("admin", without_tenant="the audit chain holds every tenant's rows: "
                                                                      "it is verified by a node admin (token "
                                                                      "without tenant)"))]


@router.get("/v1/audit", summary="Query the audit log (newest first)")
async def audit_query(ctx: Ctx, who: Admin, since: float | None = None, until: float | None = None,
                      actor: str | None = Query(None, max_length=200),
                      tenant: str | None = Query(None, max_length=63),
                      action: str | None = Query(None, max_length=100),
                      limit: int = Query(100, ge=1, le=10_000)) -> list[dict]:
    if who.tenant is not None:
        tenant = who.tenant
    return await ctx.audit.run(ctx.audit.query, since, until, actor, tenant, action, limit)


@router.get("/v1/audit/verify", summary="Verify the audit log's hash chain, optionally against an anchor")
async def audit_verify(ctx: Ctx, who: NodeAdmin,
                       seq: int | None = Query(None, ge=0, le=MAX_INTEGER, description="an anchor's row (with head)"),
                       head: str | None = Query(None, pattern="^[0-9a-f]{64}$",
                                                description="the hash the anchor pinned at that row")) -> dict:
    if (seq is None) != (head is None):
        raise invalid("an anchor is given as both seq and head")
    anchors = [{"seq": seq, "head": head}] if seq is not None else []
    return await ctx.audit.run(ctx.audit.verify, anchors)


@router.get("/v1/audit/anchor", summary="The chain's head now, as a record to keep elsewhere")
async def audit_anchor(ctx: Ctx, who: NodeAdmin) -> dict:
    return await ctx.audit.run(ctx.audit.anchor, ctx.node.config.name)

