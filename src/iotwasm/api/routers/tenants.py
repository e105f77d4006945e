"""Tenants (a namespace's topic prefix, quotas and signing policy) and the keys they trust.
Anyone may read the tenants they can see; only a node admin (admin token without tenant)
changes them."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field, field_validator

from ...node.bounded_yaml import excerpt
from ...node.manifests import NAME
from ...registry import signing
from ..deps import Ctx, Role, Viewer
from ..guard import GuardedRoute
from ..problems import invalid, not_found
from ..security import Principal, Tenant

#: tenants and their keys are changed by a node admin
NodeAdmin = Annotated[Principal, Depends(Role("admin", without_tenant="tenants are managed by a node admin "
                                                                   "(token without tenant)"))]

router = APIRouter(tags=["security"], route_class=GuardedRoute)


class TenantBody(BaseModel):
    topic_prefix: str = Field("", max_length=200, description="every topic of the tenant must start with it: "
                              "topic levels ending in '/', e.g. 'acme/' (no wildcards); '' confines nothing")
    max_memory: str | None = Field(None, pattern=r"^[0-9]+(\.[0-9]+)?\s*([kKMGT]i?|[kKMGT]?B?)?$")
    max_instances: int | None = Field(None, ge=0)
    max_deployments: int | None = Field(None, ge=0)
    require_signatures: bool = False


    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if v == "":
            return v
        if "#" in v or "+" in v:
            raise ValueError(f"{v!r} holds a wildcard ('#' or '+'); a prefix is plain topic levels ending "
                             "in '/', e.g. 'acme/'")
        if not v.endswith("/"):
            raise ValueError(f"{v!r} must end with '/': without it, it would also admit another tenant's "
                             f"topics such as '{v}2/…'")
        if v.startswith("$") or any(ord(c) < 0x20 or c == "\x7f" for c in v):
            raise ValueError(f"{v!r} may not start with '$' (system topics) or hold control characters")
        return v


class KeyBody(BaseModel):
    public_pem: str = Field(min_length=1, max_length=10_000)


@router.get("/v1/tenants", summary="List tenants")
async def list_tenants(ctx: Ctx, who: Viewer) -> list[dict]:
    return [t.to_dict() for t in ctx.security.tenants() if who.may_see(t.name)]


@router.get("/v1/tenants/{name}", summary="Show a tenant")
async def get_tenant(name: str, ctx: Ctx, who: Viewer) -> dict:
    t = ctx.security.tenant(name)
    if t is None or not who.may_see(name):
        raise not_found(f"no tenant {excerpt(name, quote=True)}")
    return t.to_dict()


@router.put("/v1/tenants/{name}", summary="Create or change a tenant (node admin)")
async def put_tenant(name: str, body: TenantBody, ctx: Ctx, who: NodeAdmin) -> dict:
    if not NAME.match(name):
        raise invalid(f"tenant name {excerpt(name, quote=True)} must be a namespace name "
                      "(lowercase letters, digits, '-')")
    t = Tenant(name=name, **body.model_dump())
    await asyncio.to_thread(ctx.security.put_tenant, t)   # api.db syncs every commit: off the loop
    await ctx.record(who, "tenant.put", f"tenant/{name}", json.dumps(body.model_dump()), tenant=name)
    return (ctx.security.tenant(name) or t).to_dict()


@router.delete("/v1/tenants/{name}", summary="Delete a tenant's policy (node admin)")
async def delete_tenant(name: str, ctx: Ctx, who: NodeAdmin) -> dict:
    if not await asyncio.to_thread(ctx.security.delete_tenant, name):
        raise not_found(f"no tenant {excerpt(name, quote=True)}")
    await ctx.record(who, "tenant.delete", f"tenant/{name}", tenant=name)
    return {"deleted": name}


@router.post("/v1/tenants/{name}/keys", status_code=201,
             summary="Trust a public key for a tenant's modules (node admin)")
async def trust_key(name: str, body: KeyBody, ctx: Ctx, who: NodeAdmin) -> dict:
    try:
        kid = signing.key_id(signing.load_public(body.public_pem))
    except signing.SignatureError as e:
        raise invalid(str(e)) from None
    await asyncio.to_thread(ctx.security.trust, name, kid, body.public_pem)
    await ctx.record(who, "key.trust", f"tenant/{name}", f"key {kid}", tenant=name)
    return {"tenant": name, "key_id": kid}


@router.delete("/v1/tenants/{name}/keys/{key_id}", summary="Stop trusting a key (node admin)")
async def distrust_key(name: str, key_id: str, ctx: Ctx, who: NodeAdmin) -> dict:
    if not await asyncio.to_thread(ctx.security.distrust, name, key_id):
        raise not_found(f"tenant {excerpt(name, quote=True)} does not trust key "
                        f"{excerpt(key_id, quote=True)}")
    await ctx.record(who, "key.distrust", f"tenant/{name}", f"key {key_id}", tenant=name)
    return {"tenant": name, "distrusted": key_id}
