"""``CHIME_WORKERS=N``: N worker processes serving one port, under one main process.

Sanic's worker manager (``Sanic.serve``) binds the listening socket once, here in the
main process, and starts N worker processes (spawned: fresh interpreters, nothing
inherited but the socket and the environment) that accept on it. Each worker builds
its own app with ``build_worker_app(settings)`` from the very ``Settings`` the main
process read, and serves it as ``python app.py`` serves in one process: the same
connection protocol, listen backlog, no access log, stop steps and garbage-collector
tuning. State that must be shared (the store, fan-out, presence, limits) lives in
Redis, which is why more than one worker needs ``CHIME_REDIS_URL`` (app.check_can_serve).

SIGTERM or SIGINT to the main process stops every worker the way one process stops
(answers end as interrupted within the grace period, streams end), and then the main
process exits 0. ``/metrics`` in any worker covers all of them (``metrics``).
"""

from __future__ import annotations

import asyncio
from functools import partial

from sanic import Sanic
from sanic.worker.loader import AppLoader

import metrics
from app import LISTEN_BACKLOG, configure_logging, create_app, tune_garbage_collector
from routes.protocol import DeadlineProtocol
from services import ChimeApp
from settings import Settings


def serve_workers(settings: Settings) -> None:
    """Serve on ``settings.host:settings.port`` with ``settings.workers`` processes until stopped."""
    with metrics.multiprocess_dir():  # before any worker starts, so every worker writes there
        # The main process's app is never served: it carries the server's settings to the workers.
        primary = create_app(settings)
        primary.prepare(host=settings.host, port=settings.port, workers=settings.workers, access_log=False,
                        motd=False, backlog=LISTEN_BACKLOG, protocol=DeadlineProtocol)
        Sanic.serve(primary=primary, app_loader=AppLoader(factory=partial(build_worker_app, settings)))


def build_worker_app(settings: Settings) -> ChimeApp:
    """One worker's app (called in the worker process by Sanic's loader)."""
    configure_logging(settings.log_level)
    app = create_app(settings)
    app.ctx.owns_process = True  # stopping may ignore further signals and end the worker if stuck
    _WorkerMetrics().attach(app)
    tune_garbage_collector()
    return app


class _WorkerMetrics:
    """While the worker serves, its gauges are published for the other workers' scrapes."""

    def __init__(self) -> None:
        self._publisher: asyncio.Task[None] | None = None

    def attach(self, app: ChimeApp) -> None:
        app.after_server_start(self._start)
        app.before_server_stop(self._stop)
        app.after_server_stop(self._leave)

    async def _start(self, app: ChimeApp) -> None:
        self._publisher = asyncio.get_running_loop().create_task(app.ctx.metrics.publish_gauges_every(),
                                                                 name="chime-gauge-publisher")

    async def _stop(self, app: ChimeApp) -> None:
        if self._publisher is not None:
            self._publisher.cancel()
            self._publisher = None

    async def _leave(self, app: ChimeApp) -> None:
        if hasattr(app.ctx, "metrics"):
            app.ctx.metrics.forget_this_process()
