"""Nothing of a request's body is read before its caller is known, and never more than a cap.

FastAPI reads and parses a route's body before it runs the route's dependencies, so a token
check declared as a dependency comes too late: a 300 MB JSON body sent without a token would be
read and parsed first. `GuardedRoute` runs the route's `Role` check before FastAPI's handler
sees the request (401/403 without reading a byte), then hands the handler a body stream that
answers 413 as soon as more than the route's cap arrives (at once when ``Content-Length``
says so) and, for JSON, 422 as soon as it nests deeper than `MAX_JSON_DEPTH` — before any
parser recurses on it.

Every route gets `DEFAULT_BODY_LIMIT`; a route that takes more says so with
``dependencies=[Depends(BodyLimit(n))]``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.types import Message, Receive

from .deps import Role, bearer
from .problems import Problem

#: the body of any request, unless its route says otherwise (JSON bodies of the API are small)
DEFAULT_BODY_LIMIT = 64 * 1024
#: JSON bodies nest at most this deep (the API's own bodies nest 2 levels)
MAX_JSON_DEPTH = 32


class BodyLimit:
    """A route's body cap in bytes, declared as ``dependencies=[Depends(BodyLimit(n))]``."""

    def __init__(self, limit: int):
        self.limit = limit

    def __call__(self) -> None:
        return None


def too_large(limit: int) -> Problem:
    return Problem(413, "Too large", f"request body larger than {limit:,} bytes", "too-large")


class JsonDepth:
    """Follows the nesting of a JSON text fed in pieces, outside strings; raises 422 as soon as
    it passes `limit`. Linear in the input, constant memory."""

    def __init__(self, limit: int = MAX_JSON_DEPTH):
        self.limit, self.depth, self.in_string, self.escaped = limit, 0, False, False

    def feed(self, chunk: bytes) -> None:
        depth, in_string, escaped = self.depth, self.in_string, self.escaped
        for b in chunk:
            if in_string:
                if escaped:
                    escaped = False
                elif b == 0x5C:    # backslash
                    escaped = True
                elif b == 0x22:    # quote
                    in_string = False
            elif b == 0x22:
                in_string = True
            elif b in (0x5B, 0x7B):  # [ {
                depth += 1
                if depth > self.limit:
                    raise Problem(422, "Invalid request", f"body: JSON nested deeper than {self.limit} levels",
                                  "validation")
            elif b in (0x5D, 0x7D):  # ] }
                depth -= 1
        self.depth, self.in_string, self.escaped = depth, in_string, escaped


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def capped(request: Request, limit: int) -> Receive:
    """`request`'s receive channel, refusing more than `limit` body bytes (413) and, for a
    JSON body, nesting deeper than `MAX_JSON_DEPTH` (422)."""
    receive = request.receive
    depth = JsonDepth() if _is_json(request.headers.get("content-type")) else None
    seen = 0

    async def guarded() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            body = message.get("body", b"")
            seen += len(body)
            if seen > limit:
                raise too_large(limit)
            if depth is not None:
                depth.feed(body)
        return message
    return guarded


def _dependencies(dependant: Dependant) -> Iterator[Any]:
    for d in dependant.dependencies:
        yield d.call
        yield from _dependencies(d)


class GuardedRoute(APIRoute):
    """An APIRoute that checks its caller before its body is read and caps the body."""

    @property
    def role(self) -> Role | None:
        return next((c for c in _dependencies(self.dependant) if isinstance(c, Role)), None)

    @property
    def reads_body(self) -> bool:
        """Whether the route takes a request body (a model FastAPI parses, or one it streams)."""
        return self.body_field is not None or "requestBody" in (self.openapi_extra or {})

    @property
    def body_limit(self) -> int:
        return next((c.limit for c in _dependencies(self.dependant) if isinstance(c, BodyLimit)),
                    DEFAULT_BODY_LIMIT)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        role, limit, reads = self.role, self.body_limit, self.reads_body

        async def guarded(request: Request) -> Response:
            if role is not None:
                await role(request, await bearer(request))  # 401/403 now, remembered for the handler
            length = request.headers.get("content-length", "")
            if reads and length.isdigit() and int(length) > limit:
                raise too_large(limit)
            return await handler(Request(request.scope, capped(request, limit)))
        return guarded
