"""API tokens: create (the secret is answered once), list (never the secrets), revoke.
A tenant admin manages its own tenant's tokens only."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field, field_validator

from ...node.bounded_yaml import excerpt
from ..deps import Admin, Ctx
from ..guard import GuardedRoute
from ..policy import PolicyError
from ..problems import not_found
from ..security import expiry_seconds, utc

router = APIRouter(tags=["security"], route_class=GuardedRoute)


class TokenBody(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    role: Literal["viewer", "operator", "admin"]
    tenant: str | None = Field(None, pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    expires_in: str | None = Field(None, max_length=40, examples=["12h", "30d"],
                                   description="lifetime from now: a number with a unit s, m, h or d, at most "
                                               "3650d; omitted: the token never expires")

    @field_validator("expires_in")
    @classmethod
    def _lifetime(cls, v: str | None) -> str | None:
        if v is not None:
            expiry_seconds(v)
        return v


@router.post("/v1/tokens", status_code=201, summary="Create a token (the secret is shown only in this answer)")
async def create_token(body: TokenBody, ctx: Ctx, who: Admin) -> dict:
    if who.tenant is not None and body.tenant != who.tenant:
        await ctx.deny(who, "token.create", body.name, PolicyError("a tenant admin creates tokens of its own tenant only"))
    lifetime = expiry_seconds(body.expires_in) if body.expires_in else None
    # api.db syncs every commit (a token made or revoked stays so): off the loop
    token_id, secret, expires = await asyncio.to_thread(ctx.security.create_token, body.name, body.role,
                                                        body.tenant, lifetime)
    await ctx.record(who, "token.create", f"token/{token_id}", f"{body.name} role {body.role} tenant {body.tenant}"
               + (f" expires {utc(expires)}" if expires else ""))
    return {"id": token_id, "token": secret, "name": body.name, "role": body.role, "tenant": body.tenant,
            "expires": expires}


@router.get("/v1/tokens", summary="List tokens (never their secrets)")
async def list_tokens(ctx: Ctx, who: Admin) -> list[dict]:
    return [t for t in ctx.security.tokens() if who.tenant is None or t["tenant"] == who.tenant]


@router.delete("/v1/tokens/{token_id}", summary="Revoke a token")
async def revoke_token(token_id: str, ctx: Ctx, who: Admin) -> dict:
    tok = next((t for t in ctx.security.tokens() if t["id"] == token_id), None)
    if tok is None or (who.tenant is not None and tok["tenant"] != who.tenant) or tok["revoked"]:
        raise not_found(f"no active token {excerpt(token_id, quote=True)}")
    await asyncio.to_thread(ctx.security.revoke, token_id)
    await ctx.record(who, "token.revoke", f"token/{token_id}")
    return {"revoked": token_id}
