"""Health and metrics."""

from __future__ import annotations

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json, text

bp = Blueprint("health")


@bp.get("/healthz")
async def healthz(request: Request) -> HTTPResponse:
    return json({"status": "ok"})


@bp.get("/metrics")
async def metrics(request: Request) -> HTTPResponse:
    return text(request.app.ctx.metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")
