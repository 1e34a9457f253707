"""The web lab: `GET /` and its static files under `/lab/...`, served from mulm_jax/api/lab/ (no build step).

The page and its files hold no data, so they load without an API key (rate-limited and logged like any request);
everything the page shows comes from the API's own routes, which need one when the server has keys.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mulm_jax.api.errors import ApiError
from mulm_jax.api.openapi import endpoint

LAB_DIR = Path(__file__).resolve().parent.parent / "lab"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# Revalidate on every use (answered 304 while the ETag matches), so a changed file shows at the next load.
CACHE_CONTROL = "no-cache"
# The page loads and calls nothing but this server: no CDN, no inline script or style markup.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)


def lab_file(relative: str) -> Optional[Path]:
    """The file `relative` names in the lab folder, or None when it names nothing the lab serves: a path that
    leaves the folder (`..`, however it was encoded), a hidden name, a symbolic link, a folder, an unknown type."""
    parts = relative.split("/")
    if any(part in ("", ".", "..") or part.startswith(".") or "\x00" in part for part in parts):
        return None
    path = LAB_DIR.joinpath(*parts)
    if path.suffix not in CONTENT_TYPES or path.resolve() != path or not path.is_file():
        return None  # resolve() differs from the path when any part of it is a link
    return path


def file_response(request: Request, path: Path) -> Response:
    """The file with its content type and a strong ETag (its content's hash); 304 when the client has it."""
    body = path.read_bytes()
    etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL, "X-Content-Type-Options": "nosniff"}
    if path.suffix == ".html":
        headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    known = [tag.strip().removeprefix("W/") for tag in request.headers.get("if-none-match", "").split(",")]
    if etag in known or "*" in known:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=CONTENT_TYPES[path.suffix], headers=headers)


def routes(ctx) -> list[Route]:
    @endpoint(media_types=("text/html",))
    def index(request: Request) -> Response:
        """The web lab: a page over this API (playground, inspection, data sets, training, models).

        It asks for an API key when a route it calls answers 401."""
        return file_response(request, LAB_DIR / "index.html")

    @endpoint(media_types=(), errors=(404,))
    def asset(request: Request) -> Response:
        """A static file of the web lab (script, style sheet, picture); 404 for anything outside its folder."""
        relative = request.path_params["path"]
        path = lab_file(relative)
        if path is None:
            raise ApiError(404, f"no web lab file {relative!r}", type="not_found_error", param="path", code="not_found")
        return file_response(request, path)

    return [Route("/", index, methods=["GET"]), Route("/lab/{path:path}", asset, methods=["GET"])]
