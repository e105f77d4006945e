"""The node's read-only web dashboard: three static files (HTML, JS, CSS) served under ``/ui/``.

The files hold no data and need no token; the page reads everything through the API with the
bearer token the operator gives it (in the URL fragment, which browsers never send, or in its
form). They are shipped inside the package — no build step, no CDN — because a gateway may
have no internet. A strict Content-Security-Policy allows only these files' own script and
style and calls to this origin, so even a value that slipped past the page's escaping could
not run as script.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import RedirectResponse, Response

PATH = "/ui/"
FILES = {"": ("index.html", "text/html; charset=utf-8"),
         "dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
         "dashboard.css": ("dashboard.css", "text/css; charset=utf-8")}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def install(app: FastAPI) -> None:
    """Serve the dashboard at /ui/ (and redirect / and /ui there); none of it is in the
    OpenAPI document: it is a client of the API, not part of it."""
    here = files(__name__)
    body = {sub: (here.joinpath(name).read_bytes(), media) for sub, (name, media) in FILES.items()}

    def page(sub: str):
        async def serve() -> Response:
            content, media = body[sub]
            return Response(content, media_type=media, headers=HEADERS)
        return serve

    for sub in FILES:
        app.add_api_route(PATH + sub, page(sub), methods=["GET"], include_in_schema=False)

    async def to_dashboard() -> RedirectResponse:
        return RedirectResponse(PATH, status_code=307)

    app.add_api_route("/", to_dashboard, methods=["GET"], include_in_schema=False)
    app.add_api_route("/ui", to_dashboard, methods=["GET"], include_in_schema=False)
