"""The browser front end: the chat, the answer page, the service worker, static files.

Pages carry a Content-Security-Policy that allows scripts and styles from this
origin only. Answers are model output rendered as HTML (after sanitising), so
even a sanitiser bug must not let an inline script or event handler run.
"""

from __future__ import annotations

import mimetypes
from datetime import UTC
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from urllib.parse import unquote

from sanic import Blueprint
from sanic.response import HTTPResponse, empty, file

from errors import NotFound
from services import ChimeRequest

FRONTEND = Path(__file__).resolve().parent.parent / "frontend"

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'",
    "script-src 'self'",            # no inline script, no eval: sanitised HTML can't run code
    "style-src 'self'",
    "img-src 'self' data:",         # a model's image links can't leak the page to other hosts
    "connect-src 'self'",           # fetch, EventSource and same-origin WebSocket
    "worker-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
))

PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

bp = Blueprint("pages")


@bp.get("/")
async def chat_page(request: ChimeRequest) -> HTTPResponse:
    return await file(FRONTEND / "index.html", headers=PAGE_HEADERS)


@bp.get("/c/<channel_id:str>")
async def answer_page(request: ChimeRequest, channel_id: str) -> HTTPResponse:
    """The page itself is public and static; it reads the answer through the API as its owner."""
    return await file(FRONTEND / "answer.html", headers=PAGE_HEADERS)


@bp.get("/sw.js")
async def service_worker(request: ChimeRequest) -> HTTPResponse:
    # Served at the root so its scope is the whole origin (/c/... pages included).
    return await file(FRONTEND / "sw.js", mime_type="text/javascript",
                      headers={**PAGE_HEADERS, "Service-Worker-Allowed": "/"})


@bp.get("/manifest.webmanifest")
async def web_app_manifest(request: ChimeRequest) -> HTTPResponse:
    """The web app manifest: what makes the chat installable (and, on iOS, able to receive push)."""
    return await file(FRONTEND / "manifest.webmanifest", mime_type="application/manifest+json",
                      headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


@bp.get("/apple-touch-icon.png")
async def apple_touch_icon(request: ChimeRequest) -> HTTPResponse:
    # iOS asks for this path by name when a page links no icon (and some crawlers always do).
    return await file(FRONTEND / "icons" / "apple-touch-icon.png", mime_type="image/png")


# Sanic's route() returns a handler-or-(route, handler) union, which mypy counts as untyped.
@bp.route("/static/<name:path>", methods=["GET", "HEAD"], name="static")  # type: ignore[untyped-decorator]
async def static_file(request: ChimeRequest, name: str) -> HTTPResponse:
    """A file under ``frontend/``; any other name (a folder, ``..``, a NUL byte, a link out) is 404.

    Served here rather than by ``Blueprint.static``, which answers a folder or a NUL
    byte with a 500 and logs every refused name as an error.
    """
    path = frontend_file(name)
    if path is None:
        raise NotFound("No such file.")
    modified = int(path.stat().st_mtime)
    headers = {"Last-Modified": formatdate(modified, usegmt=True)}
    if unchanged_since(request.headers.get("if-modified-since"), modified):
        return empty(status=304, headers=headers)
    return await file(path, mime_type=content_type(path), headers=headers)


def frontend_file(name: str) -> Path | None:
    """The regular file ``name`` names inside ``frontend/``, or None."""
    relative = unquote(name)  # the router leaves %2e%2e and friends encoded
    if not relative or "\0" in relative or ".." in relative.split("/"):
        return None
    try:
        path = (FRONTEND / relative.lstrip("/")).resolve()
        inside = path.is_relative_to(FRONTEND) and path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, say
        return None
    return path if inside else None


def unchanged_since(if_modified_since: str | None, modified: int) -> bool:
    """Whether the client's copy (``If-Modified-Since``) is current; an unreadable date is not."""
    if not if_modified_since:
        return False
    try:
        since = parsedate_to_datetime(if_modified_since)
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        return modified <= since.timestamp()
    except (TypeError, ValueError, OverflowError):  # year 0, day 31 of February, a +99:00 zone...
        return False


# Types the platform's table may lack or get wrong; a module script served with
# any other type does not run.
CONTENT_TYPES = {".webmanifest": "application/manifest+json", ".mjs": "text/javascript", ".js": "text/javascript",
                 ".png": "image/png", ".svg": "image/svg+xml"}


def content_type(path: Path) -> str:
    guessed = CONTENT_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"{guessed}; charset=utf-8" if guessed.startswith("text/") or guessed.endswith("javascript") else guessed
