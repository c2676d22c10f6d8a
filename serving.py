"""``CHIME_WORKERS=N``: N worker processes serving one port, under one main process.

Sanic's worker manager (``Sanic.serve``) binds the listening socket once, here in the
main process, and starts N worker processes (spawned: fresh interpreters, nothing
inherited but the socket and the environment) that accept on it. Each worker builds
its own app with ``build_worker_app`` from the very ``Settings`` the main process read,
and serves it as ``python app.py`` serves in one process: the same connection
protocol, listen backlog, no access log, stop steps and garbage-collector tuning.
State that must be shared (the store, fan-out, presence, limits) lives in Redis, which
is why more than one worker needs ``CHIME_REDIS_URL`` (app.check_can_serve).

SIGTERM or SIGINT to the main process stops every worker the way one process stops
(answers end as interrupted within the grace period, streams end), and then the main
process exits 0. ``/metrics`` in any worker covers all of them (``metrics``).

Limits of Sanic's worker manager (25.12) that remain: a worker that dies is not started
again (the others go on serving); a stop asked for while the workers are still starting
waits for the manager's own time-outs (about 20 s) before the workers stop.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
from functools import partial
from pathlib import Path
from types import FrameType

from sanic import Sanic
from sanic.worker.loader import AppLoader

import metrics
from app import LISTEN_BACKLOG, configure_logging, create_app, tune_garbage_collector
from routes.protocol import DeadlineProtocol
from services import ChimeApp
from settings import Settings

log = logging.getLogger("chime")

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# What a worker's ``app.m.terminate()`` posts to the main process: stop every worker, then exit.
TERMINATE = "__TERMINATE__"


def serve_workers(settings: Settings) -> None:
    """Serve on ``settings.host:settings.port`` with ``settings.workers`` processes until stopped."""
    with metrics.multiprocess_dir() as directory:  # before any worker starts, so every worker writes there
        # The main process's app is never served: it carries the server's settings to the workers.
        primary = create_app(settings)
        primary.prepare(host=settings.host, port=settings.port, workers=settings.workers, access_log=False,
                        motd=False, backlog=LISTEN_BACKLOG, protocol=DeadlineProtocol)
        # When a worker fails to start, Sanic kills the workers and ends this process with
        # os._exit(1), past the end of this block (unless that kill reached this process too):
        # its last step removes the directory then.
        primary.main_process_stop(partial(_remove_directory, directory))
        primary.main_process_ready(_stop_once)
        worker = partial(build_worker_app, settings, os.getpid())
        Sanic.serve(primary=primary, app_loader=AppLoader(factory=worker))


def _remove_directory(directory: Path, app: ChimeApp) -> None:
    metrics.remove_multiprocess_dir(directory)


def _stop_once(app: ChimeApp) -> None:
    """The first SIGTERM or SIGINT stops the workers; later ones are ignored, as in one process.

    Sanic's own handler stops the workers from inside the signal handler, through the
    manager's shared state: a signal that lands while the main loop is in the middle of
    reading that state leaves the main process waiting forever for a reply (seen: workers
    stopped, the main process hung). Here the handler only posts the request to stop on the
    manager's message pipe, the one a worker's ``app.m.terminate()`` uses, and the main loop
    stops the workers when it reads it. A second signal would have Sanic SIGKILL every
    worker mid-stop; it is ignored instead, since each worker bounds its own stop.
    """
    manager = app.manager

    def stop(signum: int, frame: FrameType | None) -> None:
        for each in STOP_SIGNALS:
            # A Python handler, not SIG_IGN: a signal already pending when this one ran would
            # otherwise be reported as "ignored due to race condition", with a traceback.
            signal.signal(each, _already_stopping)
        log.info("%s: stopping the workers", signal.Signals(signum).name)
        manager.monitor_publisher.send(TERMINATE)

    for each in STOP_SIGNALS:
        signal.signal(each, stop)


def _already_stopping(signum: int, frame: FrameType | None) -> None:
    log.info("%s while stopping: the stop goes on", signal.Signals(signum).name)


def build_worker_app(settings: Settings, main_pid: int) -> ChimeApp:
    """One worker's app (called in the worker process by Sanic's loader)."""
    _leave_the_main_process_group(main_pid)
    configure_logging(settings.log_level)
    app = create_app(settings)
    app.ctx.owns_process = True  # stopping may ignore further signals and end the worker if stuck
    _WorkerMetrics().attach(app)
    tune_garbage_collector()
    return app


def _leave_the_main_process_group(main_pid: int) -> None:
    """The worker in a process group of its own, ending with the main process.

    When a worker fails to start, Sanic's manager SIGKILLs each worker's process group: in
    the main process's group that would also kill the main process and whatever shares its
    group (a shell pipeline, a test runner). In a group of its own only the worker dies
    (a worker still importing, not yet here, is still in the main group: start the server
    in a session of its own where that matters), and terminal signals (Ctrl-C) reach the
    main process alone, which stops the workers in order. Should the main process die
    without stopping them (kill -9), the kernel sends each worker SIGTERM, its ordinary stop.
    """
    os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != main_pid:  # it died before the request above: nobody would stop this worker
            raise SystemExit("chime: the main process is gone; this worker stops")


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
