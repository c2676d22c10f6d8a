"""Chime: durable streaming of AI chat answers.

``create_app(settings)`` builds the Sanic app; ``python app.py`` runs it in one
process, or in ``CHIME_WORKERS`` processes on one port (``serving.py``). With
``CHIME_REDIS_URL`` every process on that Redis serves as one service.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import logging
import os
import resource
import signal
import socket
import sys
import threading
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from sanic import Sanic

import backup
import errors
from channels.answers import Answers
from channels.generation import ENDINGS_AT_ONCE, SWEEP_INTERVAL_S, Completion, Generations
from channels.hub import Hub
from channels.limits import Limits, SharedLimits
from channels.peers import RedisPeers
from channels.presence import Presence, SharedPresence
from channels.redis import RedisStore
from channels.sqlite import SQLiteStore
from channels.store import Store
from llm import make_provider
from metrics import Metrics
from notify import service as notify
from notify.vapid import VapidKeys, new_private_key_pem
from routes import api, origin
from routes.auth import Users
from routes.protocol import DeadlineProtocol
from services import ChimeApp, Services
from settings import Settings, SettingsError

log = logging.getLogger("chime")

APP_NAME = "chime"
# Connections a burst of readers may queue before accept(); Sanic's default of 100
# drops SYNs when thousands reconnect at once (e.g. after a restart).
LISTEN_BACKLOG = 1024
# Collect the youngest generation after this many new container objects, not CPython's 700.
# Each token allocates a few dozen short-lived objects, so at 25,000 tokens a second the
# default ran a collection every millisecond, and its older generations (every running
# answer's objects) every few: a full collection paused all streams for ~70 ms.
GC_YOUNG_THRESHOLD = 50_000
GC_OLDER_THRESHOLDS = (50, 100)  # young collections per middle one; middle ones per full one
# If stopping ever takes this much longer than its own bounds, the process ends anyway:
# a stop must not hang, whatever a model endpoint or a client does meanwhile.
STOP_WATCHDOG_SLACK_S = 15.0
# With Redis: a process's lease lives this share of CHIME_LEASE_S, and the sweep runs every
# SWEEP_SHARE of it, so a dead process's answers end within the lease (0.5 + 2 x 0.2).
LEASE_TTL_SHARE = 0.5
SWEEP_SHARE = 0.2


def create_app(settings: Settings | None = None) -> ChimeApp:
    settings = settings or Settings.from_env()
    app = Sanic(APP_NAME, ctx=Services())
    configure(app, settings)
    errors.install(app)
    app.register_middleware(origin.checker(settings.allowed_origins), "request")
    app.blueprint(api)
    app.ctx.settings = settings
    app.ctx.stopping = False
    app.ctx.stop_runs = {}
    app.before_server_start(start_services)
    app.before_server_stop(stop_streams)
    app.after_server_stop(close_services)
    return app


def configure(app: ChimeApp, settings: Settings) -> None:
    config = app.config
    config.REQUEST_MAX_SIZE = settings.max_body_bytes
    # Counted from a request's first byte by DeadlineProtocol (Sanic's own restarts at every byte).
    # Sanic's Config annotates its timeouts as int, but any number of seconds works (a deadline).
    config.REQUEST_TIMEOUT = settings.request_timeout_s  # type: ignore[assignment]
    # Only the last N hops of X-Forwarded-* are believed: the client address the limits count
    # by, and the scheme that decides the cookie's Secure attribute and this server's origin.
    config.PROXIES_COUNT = settings.proxies_count
    # Open streams end on stop (stop_streams); this only bounds a stuck client.
    config.GRACEFUL_SHUTDOWN_TIMEOUT = settings.shutdown_grace_s + 2.0
    # Keepalive comments are what keep a quiet stream under the response timeout.
    config.RESPONSE_TIMEOUT = max(60.0, settings.keepalive_s * 3)  # type: ignore[assignment]  # int in Config, as above
    config.FALLBACK_ERROR_FORMAT = "json"
    config.WEBSOCKET_MAX_SIZE = 64 * 1024
    config.ACCESS_LOG = False
    config.NOISY_EXCEPTIONS = False


async def start_services(app: ChimeApp) -> None:
    settings = app.ctx.settings
    ctx = app.ctx
    ctx.stopping = False  # an app that was stopped may be started again (test clients do)
    ctx.stop_runs = {}
    ctx.metrics = Metrics()
    peers: RedisPeers | None = None
    if settings.redis_url is not None:
        # Several processes, one service: the store is Redis, a channel with readers here is
        # watched for the commits of the process generating it, and readers count everywhere.
        store: Store = RedisStore(settings.redis_url)
        ctx.hub = Hub(watcher=store)
        peers = RedisPeers(settings.redis_url, lambda channel: ctx.generations.cancel(channel),
                           ttl_s=settings.lease_s * LEASE_TTL_SHARE)
        presence = SharedPresence(peers)
        peers.on_report = presence.apply_report
        ctx.presence = presence
    else:
        store = SQLiteStore(settings.db_path)
        ctx.hub = Hub()
        ctx.presence = Presence()
    ctx.store = store
    ctx.store.on_commit = ctx.hub.publish
    # After a batch that did not commit, readers catch up with what the store holds.
    ctx.hub.store = ctx.store
    ctx.store.on_failure = ctx.hub.resync
    await ctx.store.open()
    if peers is not None:
        await peers.open()
        ctx.peers = peers
    ctx.users = Users(ctx.store)
    ctx.provider = make_provider(settings)
    ctx.generations = Generations(ctx.store, ctx.provider, ctx.presence, peers=peers,
                                  max_answer_chars=settings.max_answer_chars, max_answer_s=settings.max_answer_s)
    if peers is not None:
        ctx.limits = SharedLimits(peers, settings.max_running_per_user, settings.submissions_per_minute,
                                  max_running_total=settings.max_running,
                                  new_users_per_minute=settings.new_users_per_minute)
    else:
        ctx.limits = Limits(settings.max_running_per_user, settings.submissions_per_minute,
                            ctx.generations.running_for, max_running_total=settings.max_running,
                            running_total=lambda: ctx.generations.running,
                            new_users_per_minute=settings.new_users_per_minute)
    ctx.answers = Answers(ctx.store, ctx.generations, ctx.limits, settings, ctx.hub, on_new_user=ctx.users.remember)
    ctx.generations.completion_hooks.append(_count_completion(ctx.metrics))
    _register_gauges(ctx)
    # Every process signs pushes with the same key: with peers, the one kept in Redis.
    vapid = VapidKeys.from_pem(await peers.agreed_value("vapid-private-key", new_private_key_pem)) if peers else None
    ctx.vapid, ctx.notifier = notify.create(settings, ctx.store, ctx.metrics, vapid)
    ctx.generations.completion_hooks.append(ctx.notifier.on_completion)
    interrupted = await ctx.generations.interrupt_orphans()
    if interrupted:
        log.warning("ended %d answers left running by a previous process as interrupted", interrupted)
    # An answer whose generation is gone (a submission cut between its commit and its start,
    # a terminal append that never succeeded) still ends: the store is the truth.
    # With peers, a dead process's answers end within CHIME_LEASE_S: its lease runs out, then
    # two sweeps see them unowned.
    sweep_s = settings.lease_s * SWEEP_SHARE if peers is not None else SWEEP_INTERVAL_S
    ctx.sweeper = asyncio.get_running_loop().create_task(ctx.generations.sweep(sweep_s), name="chime-sweeper")
    log.info("Chime listening on http://%s:%d, model %r (%s), data in %s", settings.host, settings.port,
             settings.model_name, "offline demo" if settings.uses_demo_model else settings.openai_base_url
             or "OpenAI", settings.data_dir.resolve())


def _count_completion(metrics: Metrics) -> Callable[[Completion], None]:
    def count(completion: Completion) -> None:
        metrics.inc("chime_answers_total", help="Answers ended, by terminal status.", status=completion.status)
    return count


def _register_gauges(ctx: Services) -> None:
    ctx.metrics.gauge("chime_running_answers", "Answers being generated.", lambda: ctx.generations.running)
    ctx.metrics.gauge("chime_answers_waiting_to_end", "Answers whose model has finished, waiting for their turn "
                      f"to end (at most {ENDINGS_AT_ONCE} end at once per process).",
                      lambda: ctx.generations.waiting_to_end)
    ctx.metrics.gauge("chime_attached_readers", "Readers attached to a channel.", lambda: ctx.hub.readers)
    ctx.metrics.gauge("chime_store_commits", "Group commits since start.", lambda: ctx.store.commits)
    ctx.metrics.gauge("chime_store_committed_events", "Events committed since start.",
                      lambda: ctx.store.committed_events)


async def stop_streams(app: ChimeApp) -> None:
    """Running answers get a grace period, then end as interrupted; then every stream ends."""
    await _once(app, "stop_streams", _stop_streams)


async def _stop_streams(app: ChimeApp) -> None:
    ctx = app.ctx
    ctx.stopping = True
    if getattr(ctx, "owns_process", False):
        # A second SIGTERM or Ctrl-C during the stop must not start it over, nor kill
        # the process before its running answers have ended as interrupted.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        _start_stop_watchdog(ctx.settings.shutdown_grace_s + app.config.GRACEFUL_SHUTDOWN_TIMEOUT)
    if hasattr(ctx, "sweeper"):
        ctx.sweeper.cancel()
    if hasattr(ctx, "answers"):
        await ctx.answers.settle()
    if hasattr(ctx, "generations"):
        await ctx.generations.shutdown(ctx.settings.shutdown_grace_s)
    if hasattr(ctx, "hub"):
        ctx.hub.shutdown()


async def close_services(app: ChimeApp) -> None:
    await _once(app, "close_services", _close_services)


async def _close_services(app: ChimeApp) -> None:
    ctx = app.ctx
    if hasattr(ctx, "notifier"):  # before the store closes: a push may still delete a subscription
        await ctx.notifier.stop(ctx.settings.shutdown_grace_s)
    if hasattr(ctx, "provider"):
        await ctx.provider.close()
    if hasattr(ctx, "peers"):  # after the answers ended: their claims are released
        if isinstance(ctx.presence, SharedPresence):
            await ctx.presence.close()
        await ctx.peers.close()
    if hasattr(ctx, "store"):
        await ctx.store.close()


async def _once(app: ChimeApp, name: str, step: Callable[[ChimeApp], Coroutine[Any, Any, None]]) -> None:
    """Run a stop step once; a second call (Sanic re-runs the listeners when a signal stops the
    loop during the stop) waits for the same run instead of running it beside the first."""
    runs = app.ctx.stop_runs
    task = runs.get(name)
    if task is None:
        task = runs[name] = asyncio.get_running_loop().create_task(step(app), name=f"chime-{name}")
    await asyncio.shield(task)


def _start_stop_watchdog(bound_s: float) -> None:
    def give_up() -> None:
        log.error("stopping took longer than %.0fs; exiting now", bound_s + STOP_WATCHDOG_SLACK_S)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(bound_s + STOP_WATCHDOG_SLACK_S, give_up)
    timer.daemon = True
    timer.start()


def configure_logging(level: str) -> None:
    """Chime's own loggers get a handler; Sanic's keep theirs (a root handler would print them twice)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def main(argv: Sequence[str] | None = None) -> None:
    """``python app.py`` serves; ``backup PATH`` and ``restore PATH`` work on CHIME_DATA_DIR's data."""
    args = _parse_arguments(sys.argv[1:] if argv is None else argv)
    if args.command == "backup":
        raise SystemExit(_backup(data_dir_from_env(), Path(args.path)))
    if args.command == "restore":
        raise SystemExit(_restore(data_dir_from_env(), Path(args.path)))
    try:
        settings = Settings.from_env()
        data_dir_lock = check_can_serve(settings)
    except (SettingsError, StartupError) as exc:
        print(f"chime: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        configure_logging(settings.log_level)
        raise_open_files_limit()
        if settings.workers > 1:
            import serving  # it imports this module back (as ``app``): only when it serves

            serving.serve_workers(settings)
            return
        app = create_app(settings)
        app.ctx.owns_process = True  # stopping may ignore further signals and end the process if stuck
        tune_garbage_collector()
        app.run(host=settings.host, port=settings.port, single_process=True, access_log=False, motd=False,
                backlog=LISTEN_BACKLOG, protocol=DeadlineProtocol)
    finally:
        if data_dir_lock is not None:
            data_dir_lock.release()


class StartupError(Exception):
    """The machine will not let the server run as configured; the message says what to fix."""


def _parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python app.py", description="Chime: durable streaming of AI chat "
                                     "answers. With no command, serves (configured by the environment).")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("backup", help="copy the database and VAPID key of CHIME_DATA_DIR, even while the "
                        "server runs").add_argument("path", help="a new or empty directory for the copy")
    commands.add_parser("restore", help="put a backup into CHIME_DATA_DIR; the server must be stopped"
                        ).add_argument("path", help="a directory made by backup, or a chime.sqlite3 file")
    return parser.parse_args(list(argv))


def data_dir_from_env() -> Path:
    """CHIME_DATA_DIR alone: a backup must not wait on a model setting being right."""
    raw = os.environ.get("CHIME_DATA_DIR", "").strip()
    return Path(raw) if raw else Settings().data_dir


def _backup(data_dir: Path, destination: Path) -> int:
    try:
        contents = backup.backup(data_dir, destination)
    except (backup.OperatorError, OSError) as exc:
        print(f"chime: backup failed: {exc}", file=sys.stderr)
        return 1
    print(f"chime: backed up {contents.describe()} from {data_dir.resolve()} to {destination.resolve()}")
    return 0


def _restore(data_dir: Path, source: Path) -> int:
    try:
        contents, kept = backup.restore(data_dir, source)
    except (backup.OperatorError, OSError) as exc:
        print(f"chime: restore refused: {exc}", file=sys.stderr)
        return 1
    print(f"chime: restored {contents.describe()} from {source.resolve()} into {data_dir.resolve()}")
    if kept:
        print(f"chime: what it replaced is kept as {', '.join(str(path) for path in kept)}")
    if contents.running:
        print("chime: answers that were running at backup time end as interrupted when the server starts")
    return 0


def check_can_serve(settings: Settings) -> backup.DataDirLock | None:
    """What would otherwise fail after start, with a traceback or not at all, checked before it.

    Returns the data directory's lock, held for as long as the server runs on SQLite. With
    Redis there is none: the store is in Redis, shared by design, and several processes on
    one host may be started with the same CHIME_DATA_DIR.
    """
    if settings.workers > 1 and settings.redis_url is None:
        raise StartupError(f"CHIME_WORKERS={settings.workers} needs CHIME_REDIS_URL: workers share their store, "
                           "fan-out and limits through Redis (e.g. CHIME_REDIS_URL=redis://127.0.0.1:6379/0); "
                           "without it set CHIME_WORKERS=1")
    check_data_dir(settings.data_dir)
    if settings.redis_url is not None:
        check_listen_address(settings.host, settings.port)
        return None
    try:
        data_dir_lock = backup.DataDirLock.acquire(settings.data_dir)
    except backup.DataDirBusy as exc:
        raise StartupError(f"{exc}: another server already runs on this CHIME_DATA_DIR; stop it "
                           "or give this one its own") from None
    except OSError as exc:
        raise StartupError(_data_dir_problem(settings.data_dir, exc)) from None
    try:
        check_listen_address(settings.host, settings.port)
    except StartupError:
        data_dir_lock.release()
        raise
    return data_dir_lock


def check_data_dir(data_dir: Path) -> None:
    """Create the data directory and write a file in it, as the database and key will."""
    probe = data_dir / f".chime-write-check-{os.getpid()}"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(descriptor, b"chime")
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        probe.unlink()
    except OSError as exc:
        raise StartupError(_data_dir_problem(data_dir, exc)) from None


def _data_dir_problem(data_dir: Path, exc: OSError) -> str:
    where = f" ({data_dir.absolute()})" if not data_dir.is_absolute() else ""
    culprit = f" at {exc.filename}" if exc.filename and Path(exc.filename) != data_dir else ""
    return (f"CHIME_DATA_DIR={str(data_dir)!r}{where} cannot be used: {exc.strerror or exc}{culprit}; "
            "point it at a directory this user can create and write")


def check_listen_address(host: str, port: int) -> None:
    """Bind every address Sanic will bind (as asyncio's create_server does), then let go at once."""
    try:
        addresses = {(info[0], info[4]) for info in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)}
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise StartupError(f"CHIME_HOST={host!r} is not an address of this machine ({reason}); use one "
                           "of its addresses, 127.0.0.1 for this machine only, or 0.0.0.0 for all") from None
    for family, address in addresses:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # As the server's own socket will: a port whose last connections linger in TIME_WAIT
            # after a restart is free to listen on.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise StartupError(_listen_problem(host, port, exc)) from None


def _listen_problem(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (f"CHIME_PORT={port} is already in use on {host}: stop what listens there or choose "
                "another CHIME_PORT")
    if exc.errno == errno.EADDRNOTAVAIL:
        return (f"CHIME_HOST={host!r} is not an address of this machine ({exc.strerror}); use one of its "
                "addresses, 127.0.0.1 for this machine only, or 0.0.0.0 for all")
    if exc.errno == errno.EACCES:
        return (f"CHIME_PORT={port} needs privileges this user lacks: choose a port above 1023 and put a "
                "reverse proxy in front (see the README)")
    return f"cannot listen on {host}:{port} ({exc.strerror or exc}): check CHIME_HOST and CHIME_PORT"


def tune_garbage_collector() -> None:
    """Rarer collections, and none that walk what was loaded at start (modules, routes, the app)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *GC_OLDER_THRESHOLDS)


def raise_open_files_limit() -> None:
    """Every reader holds a socket: lift the soft open-files limit to the hard one (often 1,024 -> more)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


if __name__ == "__main__":
    main()
