"""The dependencies every route of the management API declares: the `ApiContext` it works on
and the caller, authenticated and holding at least a role.

A route states what it needs in its signature::

    @router.get("/v1/deployments")
    async def list_deployments(ctx: Ctx, who: Viewer) -> list[dict]: ...

`Viewer`, `Operator` and `Admin` answer 401 without a valid bearer token and 403 for a token
whose role is too weak; every refusal is counted and audited (those without a valid token at a
bounded rate, see audit.DenialThrottle). Tenancy — what a tenant token may see or change — is
checked by the route through `ApiContext.visible` / `mutable` / `node_admin`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .context import ApiContext
from .problems import Problem
from .security import Principal, TokenExpired

bearer = HTTPBearer(auto_error=False, description="an API token (iot_…)")


def context(request: Request) -> ApiContext:
    """The `ApiContext` the app was created over."""
    ctx: ApiContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ApiContext, Depends(context)]


class Role:
    """A dependency that authenticates the caller and requires `role` (or a stronger one)."""

    def __init__(self, role: str):
        self.role = role

    async def __call__(self, request: Request,
                       cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
        ctx = context(request)
        ctx.requests += 1
        role = self.role
        where = f"{request.method} {request.url.path}"
        # without a valid token, denials are audited at a bounded rate, grouped by route
        route = f"{request.method} {getattr(request.scope.get('route'), 'path', request.url.path)}"
        if cred is None or cred.scheme.lower() != "bearer":
            ctx.denied += 1
            ctx.denials.denied("anonymous", where, "no bearer token", route)
            raise Problem(401, "Unauthorized", "this call needs 'Authorization: Bearer <token>'", "unauthorized")
        try:
            who = ctx.security.authenticate(cred.credentials)
        except TokenExpired as e:
            ctx.denied += 1
            ctx.denials.denied(e.who.actor, where, str(e), route, tenant=e.who.tenant)
            raise Problem(401, "Unauthorized", str(e), "token-expired") from None
        if who is None:
            ctx.denied += 1
            ctx.denials.denied("anonymous", where, "unknown or revoked token", route)
            raise Problem(401, "Unauthorized", "unknown or revoked token", "unauthorized")
        if not who.has(role):
            ctx.denied += 1
            ctx.audit.append(who.actor, "auth.denied", where, "denied",
                             f"needs role {role}, token has {who.role}", tenant=who.tenant)
            raise Problem(403, "Forbidden", f"{where} needs role {role}; this token has role {who.role}",
                          "forbidden")
        return who


Viewer = Annotated[Principal, Depends(Role("viewer"))]
Operator = Annotated[Principal, Depends(Role("operator"))]
Admin = Annotated[Principal, Depends(Role("admin"))]
