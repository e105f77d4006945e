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
from .policy import PolicyError
from .problems import Problem
from .security import Principal, TokenExpired

bearer = HTTPBearer(auto_error=False, description="an API token (iot_…)")


def context(request: Request) -> ApiContext:
    """The `ApiContext` the app was created over."""
    ctx: ApiContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ApiContext, Depends(context)]


#: where a request's authenticated caller is kept (in its ASGI scope) once known
PRINCIPAL = "iotwasm.principal"


class Role:
    """A dependency that authenticates the caller and requires `role` (or a stronger one) and,
    with `without_tenant` (the reason, said in the 403), a token without tenant: the call acts
    on what every tenant shares.

    `guard.GuardedRoute` calls it before the body is read; FastAPI calls it again as the
    route's dependency and then gets the caller it remembered: one token lookup, one count,
    one audit row per request. The OpenAPI document states both requirements of each operation
    (``x-iotwasm-role``, ``x-iotwasm-tenant-tokens``)."""

    def __init__(self, role: str, without_tenant: str | None = None):
        self.role, self.without_tenant = role, without_tenant

    async def __call__(self, request: Request,
                       cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
        who: Principal | None = request.scope.get(PRINCIPAL)
        if who is None:
            who = await self._authenticate(request, cred)
            request.scope[PRINCIPAL] = who
        ctx = context(request)
        where = f"{request.method} {request.url.path}"
        if not who.has(self.role):
            ctx.denied += 1
            await ctx.record(who, "auth.denied", where, f"needs role {self.role}, token has {who.role}", "denied")
            raise Problem(403, "Forbidden", f"{where} needs role {self.role}; this token has role {who.role}",
                          "forbidden")
        if self.without_tenant and who.tenant is not None:
            await ctx.deny(who, "auth.denied", where, PolicyError(self.without_tenant))
        return who

    @staticmethod
    async def _authenticate(request: Request, cred: HTTPAuthorizationCredentials | None) -> Principal:
        """The caller of a valid, unexpired bearer token, or 401."""
        ctx = context(request)
        ctx.requests += 1
        where = f"{request.method} {request.url.path}"
        # without a valid token, denials are audited at a bounded rate, grouped by route
        route = f"{request.method} {getattr(request.scope.get('route'), 'path', request.url.path)}"
        actor, tenant, problem = "anonymous", None, None
        if cred is None or cred.scheme.lower() != "bearer":
            reason = "no bearer token"
            problem = Problem(401, "Unauthorized", "this call needs 'Authorization: Bearer <token>'", "unauthorized")
        else:
            try:
                who = ctx.security.authenticate(cred.credentials)
            except TokenExpired as e:
                actor, tenant, reason = e.who.actor, e.who.tenant, str(e)
                problem = Problem(401, "Unauthorized", reason, "token-expired")
            else:
                if who is not None:
                    return who
                reason = "unknown or revoked token"
                problem = Problem(401, "Unauthorized", reason, "unauthorized")
        ctx.denied += 1
        await ctx.audit.run(ctx.denials.denied, actor, where, reason, route, tenant=tenant)
        raise problem


async def maybe_caller(request: Request,
                       cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal | None:
    """The caller of a valid token, or None — for the probes, which answer anyone and only say
    more to a caller they know; a wrong token is neither refused nor audited there."""
    if cred is None or cred.scheme.lower() != "bearer":
        return None
    try:
        return context(request).security.authenticate(cred.credentials)
    except TokenExpired:
        return None


MaybeCaller = Annotated[Principal | None, Depends(maybe_caller)]
Viewer = Annotated[Principal, Depends(Role("viewer"))]
Operator = Annotated[Principal, Depends(Role("operator"))]
Admin = Annotated[Principal, Depends(Role("admin"))]
