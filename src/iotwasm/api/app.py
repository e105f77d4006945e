"""The node's management API (FastAPI): modules, manifests, deployments, routes, logs, events,
tokens, tenants, audit, metrics and health; in a fleet, read-only views of the fleet.

Every route except the two probes (``/healthz``, ``/readyz``) and the dashboard's static files
(``/ui/``, api/dashboard, which hold no data) needs a bearer token with a
sufficient role, and tenant tokens see only their namespace: an object of another namespace is
answered 404, exactly like one that does not exist, so names do not leak across tenants.
Errors are RFC 9457 problem documents (``application/problem+json``) with one clear line in
``detail``. Every mutating call and every denied request goes to the audit log; denials of
requests without a valid token at a bounded rate, with counts of what was left out.

The routes live in api/routers (one router per resource), the caller's checks in api/deps,
what they share in api/context and the error answers in api/problems.
"""

from __future__ import annotations

from fastapi import FastAPI

from .context import ApiContext, __version__
from .guard import GuardedRoute
from .openapi import install as install_openapi
from .problems import Problem, install_handlers
from .routers import ROUTERS
from .security import ROLES


def create_app(ctx: ApiContext) -> FastAPI:
    """The API over `ctx`'s node."""
    app = FastAPI(title="iotwasm node API", version=__version__, docs_url=None, redoc_url=None,
                  description="Manage one iotwasm node: modules, manifests, deployments, routes, rules, "
                              "logs, events, tokens, tenants and the audit log; in a fleet, read-only fleet "
                              "views. Errors are RFC 9457 problem documents.")
    app.state.ctx = ctx
    app.router.route_class = GuardedRoute  # for the dashboard's routes too
    install_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    from .dashboard import install as install_dashboard
    install_dashboard(app)
    install_openapi(app, [r for router in ROUTERS for r in router.routes if isinstance(r, GuardedRoute)])
    return app


__all__ = ["ROLES", "ApiContext", "Problem", "create_app"]
