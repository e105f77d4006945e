"""Tenants (a namespace's topic prefix, quotas and signing policy) and the keys they trust.
Anyone may read the tenants they can see; only a node admin (admin token without tenant)
changes them."""

from __future__ import annotations

import json

from fastapi import APIRouter
from pydantic import BaseModel, Field

from ...node.manifests import NAME
from ...registry import signing
from ..deps import Admin, Ctx, Viewer
from ..problems import invalid, not_found
from ..security import Tenant

router = APIRouter(tags=["security"])


class TenantBody(BaseModel):
    topic_prefix: str = Field("", max_length=200, description="every topic of the tenant must start with it")
    max_memory: str | None = Field(None, pattern=r"^[0-9]+(\.[0-9]+)?\s*([kKMGT]i?|[kKMGT]?B?)?$")
    max_instances: int | None = Field(None, ge=0)
    max_deployments: int | None = Field(None, ge=0)
    require_signatures: bool = False


class KeyBody(BaseModel):
    public_pem: str = Field(min_length=1, max_length=10_000)


@router.get("/v1/tenants", summary="List tenants")
async def list_tenants(ctx: Ctx, who: Viewer) -> list[dict]:
    return [t.to_dict() for t in ctx.security.tenants() if who.may_see(t.name)]


@router.get("/v1/tenants/{name}", summary="Show a tenant")
async def get_tenant(name: str, ctx: Ctx, who: Viewer) -> dict:
    t = ctx.security.tenant(name)
    if t is None or not who.may_see(name):
        raise not_found(f"no tenant {name!r}")
    return t.to_dict()


@router.put("/v1/tenants/{name}", summary="Create or change a tenant (node admin)")
async def put_tenant(name: str, body: TenantBody, ctx: Ctx, who: Admin) -> dict:
    ctx.node_admin(who, "tenant.put", f"tenant/{name}")
    if not NAME.match(name):
        raise invalid(f"tenant name {name!r} must be a namespace name (lowercase letters, digits, '-')")
    t = Tenant(name=name, **body.model_dump())
    ctx.security.put_tenant(t)
    ctx.record(who, "tenant.put", f"tenant/{name}", json.dumps(body.model_dump()), tenant=name)
    return ctx.security.tenant(name).to_dict()


@router.delete("/v1/tenants/{name}", summary="Delete a tenant's policy (node admin)")
async def delete_tenant(name: str, ctx: Ctx, who: Admin) -> dict:
    ctx.node_admin(who, "tenant.delete", f"tenant/{name}")
    if not ctx.security.delete_tenant(name):
        raise not_found(f"no tenant {name!r}")
    ctx.record(who, "tenant.delete", f"tenant/{name}", tenant=name)
    return {"deleted": name}


@router.post("/v1/tenants/{name}/keys", status_code=201,
             summary="Trust a public key for a tenant's modules (node admin)")
async def trust_key(name: str, body: KeyBody, ctx: Ctx, who: Admin) -> dict:
    ctx.node_admin(who, "key.trust", f"tenant/{name}")
    try:
        kid = signing.key_id(signing.load_public(body.public_pem))
    except signing.SignatureError as e:
        raise invalid(str(e)) from None
    ctx.security.trust(name, kid, body.public_pem)
    ctx.record(who, "key.trust", f"tenant/{name}", f"key {kid}", tenant=name)
    return {"tenant": name, "key_id": kid}


@router.delete("/v1/tenants/{name}/keys/{key_id}", summary="Stop trusting a key (node admin)")
async def distrust_key(name: str, key_id: str, ctx: Ctx, who: Admin) -> dict:
    ctx.node_admin(who, "key.distrust", f"tenant/{name}")
    if not ctx.security.distrust(name, key_id):
        raise not_found(f"tenant {name!r} does not trust key {key_id!r}")
    ctx.record(who, "key.distrust", f"tenant/{name}", f"key {key_id}", tenant=name)
    return {"tenant": name, "distrusted": key_id}
