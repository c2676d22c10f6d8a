"""The browser front end: the chat, the answer page, the service worker, static files.

Pages carry a Content-Security-Policy that allows scripts and styles from this
origin only. Answers are model output rendered as HTML (after sanitising), so
even a sanitiser bug must not let an inline script or event handler run.
"""

from __future__ import annotations

from pathlib import Path

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, file

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
bp.static("/static", FRONTEND, name="static")


@bp.get("/")
async def chat_page(request: Request) -> HTTPResponse:
    return await file(FRONTEND / "index.html", headers=PAGE_HEADERS)


@bp.get("/c/<channel_id:str>")
async def answer_page(request: Request, channel_id: str) -> HTTPResponse:
    """The page itself is public and static; it reads the answer through the API as its owner."""
    return await file(FRONTEND / "answer.html", headers=PAGE_HEADERS)


@bp.get("/sw.js")
async def service_worker(request: Request) -> HTTPResponse:
    # Served at the root so its scope is the whole origin (/c/... pages included).
    return await file(FRONTEND / "sw.js", mime_type="text/javascript",
                      headers={**PAGE_HEADERS, "Service-Worker-Allowed": "/"})
