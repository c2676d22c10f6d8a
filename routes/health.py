"""Health and metrics."""

from __future__ import annotations

import os

from sanic import Blueprint
from sanic.response import HTTPResponse, json, text

from errors import Unavailable
from services import ChimeRequest

bp = Blueprint("health")

# How soon a load balancer should ask again once the store cannot be written.
UNWRITABLE_RETRY_AFTER_S = 2


@bp.get("/healthz")
async def healthz(request: ChimeRequest) -> HTTPResponse:
    """200 while the store can be written; 503 ``unavailable`` while it cannot (a lock held by
    another process, a stuck writer), so a balancer sends traffic elsewhere."""
    if not await request.app.ctx.store.writable():
        raise Unavailable("Storage cannot be written now; try again.", retry_after_s=UNWRITABLE_RETRY_AFTER_S)
    return json({"status": "ok"})


@bp.get("/metrics")
async def metrics(request: ChimeRequest) -> HTTPResponse:
    """Every process's counters and gauges, whichever worker answers (metrics.py)."""
    # Counted per process (its pid a label): a scrape shows every process it covers.
    request.app.ctx.metrics.inc("chime_metrics_scrapes_total", help="Scrapes of /metrics answered, by the "
                                "answering process's pid.", pid=str(os.getpid()))
    return text(request.app.ctx.metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")
