"""The audit log: query it (newest first) and verify its hash chain (admin). A tenant admin
sees its own tenant's rows only."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Query

from ..deps import Admin, Ctx

router = APIRouter(tags=["audit"])


@router.get("/v1/audit", summary="Query the audit log (newest first)")
async def audit_query(ctx: Ctx, who: Admin, since: float | None = None, until: float | None = None,
                      actor: str | None = Query(None, max_length=200),
                      tenant: str | None = Query(None, max_length=63),
                      action: str | None = Query(None, max_length=100),
                      limit: int = Query(100, ge=1, le=10_000)) -> list[dict]:
    if who.tenant is not None:
        tenant = who.tenant
    return ctx.audit.query(since, until, actor, tenant, action, limit)


@router.get("/v1/audit/verify", summary="Verify the audit log's hash chain")
async def audit_verify(ctx: Ctx, who: Admin) -> dict:
    return await asyncio.to_thread(ctx.audit.verify)
