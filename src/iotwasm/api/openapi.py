"""The API's OpenAPI document, made to say what the API really answers.

FastAPI describes success answers and a 422 in a JSON format this API never sends. Every
error here is a problem document (``application/problem+json``, RFC 9457), and which errors an
operation can answer follows from how it is declared, so the document is completed from the
same declarations the API enforces (guard.GuardedRoute, deps.Role):

* an operation with a `Role` may answer 401 and 403; it carries ``x-iotwasm-role`` (the
  weakest role allowed) and ``x-iotwasm-tenant-tokens`` (``own``: a tenant token acts on its
  own namespace; ``none``: only tokens without tenant);
* one that takes a body may answer 413 (over ``x-iotwasm-body-limit`` bytes) and 422;
* one with a path parameter may answer 404 (no such object, or another tenant's);
* 409, 503 and other answers are declared by the route itself (`errors`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from .deps import maybe_caller
from .guard import GuardedRoute
from .problems import PROBLEM

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem", "type": "object", "description": "An RFC 9457 problem document",
    "required": ["type", "title", "status", "detail"],
    "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                   "detail": {"type": "string", "description": "one line: what and where"},
                   "instance": {"type": "string", "description": "the request's path"}},
    "additionalProperties": True,
}

WHY = {
    401: "no bearer token, or an unknown, revoked or expired one",
    403: "the token's role or tenant may not do this, or a tenant policy or quota refuses it",
    404: "no such object, or one of another tenant",
    409: "conflicts with the object's state",
    413: "the request body is larger than this operation takes",
    422: "invalid parameters or body",
    503: "a service this answer needs is unavailable",
}


def errors(*statuses: int, **why: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route's own error answers, e.g. ``errors(409, why_409="in use")``."""
    return {s: {"description": why.get(f"why_{s}", WHY[s])} for s in statuses}


def _dependants(route: APIRoute) -> list[Any]:
    out, todo = [], [route.dependant]
    while todo:
        d = todo.pop()
        out.append(d)
        todo += d.dependencies
    return out


def _validates(route: GuardedRoute) -> bool:
    """Whether the route can refuse its parameters or body as invalid (422): a body, a query
    parameter, or a path parameter that is not any text."""
    ds = _dependants(route)
    return route.reads_body or any(d.query_params or d.header_params or d.cookie_params for d in ds) or \
        any(p.field_info.annotation is not str for d in ds for p in d.path_params)


def _complete(op: dict[str, Any], route: GuardedRoute) -> None:
    responses = op["responses"]
    if not _validates(route):
        responses.pop("422", None)   # FastAPI adds it to every route with a parameter
    statuses = {int(k) for k in responses if k[0] in "45"}
    role = route.role
    if role is not None:
        statuses |= {401, 403}
        op["x-iotwasm-role"] = role.role
        op["x-iotwasm-tenant-tokens"] = "none" if role.without_tenant else "own"
    elif any(d.call is maybe_caller for d in _dependants(route)):   # a token is optional: it only shows more
        op["security"] = [{"HTTPBearer": []}, {}]
    if route.reads_body:
        statuses |= {413, 422}
        op["x-iotwasm-body-limit"] = route.body_limit
    if route.param_convertors:
        statuses.add(404)
    for status in sorted(statuses):
        own = route.responses.get(status, {})
        if "content" in own:   # the route says what it sends (not a problem document)
            continue
        described = own.get("description") or WHY[status]
        responses[str(status)] = {"description": described,
                                  "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def install(app: FastAPI, routes: list[GuardedRoute]) -> None:
    """Serve (and let scripts/openapi.py write) the completed document for `app`."""
    generate = app.openapi

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = generate()
            for route in routes:
                for method in route.methods or ():
                    _complete(doc["paths"][route.path_format][method.lower()], route)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            schemas.pop("HTTPValidationError", None), schemas.pop("ValidationError", None)
            schemas["Problem"] = PROBLEM_SCHEMA
            app.openapi_schema = doc
        return app.openapi_schema
    app.openapi = document  # type: ignore[method-assign]
