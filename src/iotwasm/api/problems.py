"""Errors of the management API, answered as RFC 9457 problem documents.

Every error leaves the API as ``application/problem+json`` with one line in ``detail``:
`Problem` for what a route decides itself (it is a Starlette ``HTTPException``, so FastAPI
passes it through untouched wherever it is raised, even while a body is being read), and every
`IotwasmError` with the status and title its class carries (errors.py).
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import IotwasmError

PROBLEM = "application/problem+json"
#: the longest `detail` of a validation problem (it may quote the request)
MAX_DETAIL = 500

log = logging.getLogger("iotwasm.api")


class Problem(StarletteHTTPException):
    """An error answered as a problem document: `status`, a short `title`, one line of
    `detail`, a machine-readable `kind` (the last part of the ``type`` URI) and extension
    members (RFC 9457 §3.2) in `extra`."""

    def __init__(self, status: int, title: str, detail: str, kind: str | None = None,
                 extra: dict[str, Any] | None = None):
        super().__init__(status, detail)
        self.status, self.title = status, title
        self.kind = kind or title.lower().replace(" ", "-")
        self.extra = extra or {}


def not_found(detail: str) -> Problem:
    return Problem(404, "Not found", detail, "not-found")


def conflict(detail: str, kind: str = "conflict") -> Problem:
    return Problem(409, "Conflict", detail, kind)


def invalid(detail: str, kind: str = "validation") -> Problem:
    return Problem(422, "Invalid request", detail, kind)


class ProblemResponse(JSONResponse):
    """``application/problem+json`` in ASCII (other characters as ``\\u`` escapes): the type
    has no charset parameter, and a client that guesses one (requests does) must still read
    a detail that quotes its input right."""

    media_type = PROBLEM

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def problem_response(status: int, title: str, detail: str, kind: str, instance: str = "",
                     extra: dict[str, Any] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": f"https://iotwasm.io/problems/{kind}", "title": title, "status": status,
                            "detail": detail}
    if instance:
        body["instance"] = instance
    body.update(extra or {})
    return ProblemResponse(body, status_code=status)


def install_handlers(app: FastAPI) -> None:
    """Answer every error of `app` as a problem document."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, e: Problem) -> JSONResponse:
        return problem_response(e.status, e.title, e.detail, e.kind, request.url.path, e.extra)

    @app.exception_handler(IotwasmError)
    async def _iotwasm(request: Request, e: IotwasmError) -> JSONResponse:
        return problem_response(e.status_code, e.title, str(e), e.kind, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return problem_response(e.status_code, {404: "Not found", 405: "Method not allowed"}.get(
            e.status_code, "HTTP error"), str(e.detail), f"http-{e.status_code}", request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        errors = e.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        detail = f"{where}: {str(first.get('msg')).removeprefix('Value error, ')}"
        if len(detail) > MAX_DETAIL:
            detail = detail[:MAX_DETAIL] + "…"
        detail += f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return problem_response(422, "Invalid request", detail, "validation", request.url.path)

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception) -> JSONResponse:
        """An error nobody expected: its text may hold paths, names or data of anyone, so the
        client gets an id and the node's log gets the traceback under that id."""
        incident = secrets.token_hex(6)
        log.error("internal error %s in %s %s", incident, request.method, request.url.path, exc_info=e)
        return problem_response(500, "Internal error", f"internal error {incident}: the node's log has the "
                                "details under this id", "internal", request.url.path, {"incident": incident})
