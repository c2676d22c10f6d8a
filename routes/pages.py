"""The browser front end: the chat, the answer page, the service worker, static files."""

from __future__ import annotations

from pathlib import Path

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, file

FRONTEND = Path(__file__).resolve().parent.parent / "frontend"
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
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
    return await file(FRONTEND / "answer.html", headers=PAGE_HEADERS)


@bp.get("/sw.js")
async def service_worker(request: Request) -> HTTPResponse:
    return await file(FRONTEND / "sw.js", mime_type="text/javascript",
                      headers={**PAGE_HEADERS, "Service-Worker-Allowed": "/"})
