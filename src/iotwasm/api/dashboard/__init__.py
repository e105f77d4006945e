"""The node's web dashboard: static files (HTML, CSS, an icon, one JavaScript module per view) served
under ``/ui/``.

The files hold no data and need no token; the page reads everything through the API with the
bearer token the operator gives it (in the URL fragment, which browsers never send, or in its
form), and follows the node's live stream (``/v1/stream``, api/stream.py) with ``fetch`` so
the token stays in a header. They are shipped inside the package — no build step, no CDN, no
third-party code (the charts are SVG the page draws itself) — because a gateway may have no
internet. A strict Content-Security-Policy allows only these files' own scripts and styles and
calls to this origin, so even a value that slipped past the page's escaping could not run as
script.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import RedirectResponse, Response

PATH = "/ui/"
MEDIA = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def served() -> dict[str, tuple[bytes, str]]:
    """Path under /ui/ → (content, media type) of every file the page is made of."""
    out = {}
    for f in files(__name__).iterdir():
        media = MEDIA.get(f.name[f.name.rfind("."):]) if "." in f.name else None
        if media is not None and f.is_file():
            out["" if f.name == "index.html" else f.name] = (f.read_bytes(), media)
    return out


def install(app: FastAPI) -> None:
    """Serve the dashboard at /ui/ (and redirect / and /ui there); none of it is in the
    OpenAPI document: it is a client of the API, not part of it."""
    body = served()

    def page(sub: str):
        async def serve() -> Response:
            content, media = body[sub]
            return Response(content, media_type=media, headers=HEADERS)
        return serve

    for sub in body:
        app.add_api_route(PATH + sub, page(sub), methods=["GET"], include_in_schema=False)

    async def to_dashboard() -> RedirectResponse:
        return RedirectResponse(PATH, status_code=307)

    app.add_api_route("/", to_dashboard, methods=["GET"], include_in_schema=False)
    app.add_api_route("/ui", to_dashboard, methods=["GET"], include_in_schema=False)
