"""The management API's routes, one `APIRouter` per resource. A new resource gets its own
module here and a line in `ROUTERS`; its router uses `guard.GuardedRoute`, it declares its
caller with `deps.Viewer`, `Operator` or `Admin` (or a `deps.Role` that also refuses tenant
tokens) and checks tenancy through the `ApiContext` (`visible`, `mutable`)."""

from __future__ import annotations

from fastapi import APIRouter

from . import (
    alerts,
    audit,
    data,
    deployments,
    devices,
    events,
    fleet,
    health,
    manifests,
    modules,
    routes,
    rules,
    stream,
    tenants,
    tokens,
)

#: in the order they appear in the OpenAPI document
ROUTERS: list[APIRouter] = [health.router, modules.router, manifests.router, deployments.router, routes.router,
                            events.router, tokens.router, tenants.router, alerts.router, audit.router,
                            rules.router, fleet.router, data.router, stream.router,
                            devices.router]
