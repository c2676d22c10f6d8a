"""What the app shares between requests: ``app.ctx``, typed.

``create_app`` sets ``settings`` and the stop bookkeeping; the services arrive in
``start_services`` (before the server starts) and are only declared here, so that
before then ``hasattr(app.ctx, "store")`` is false, as the stop steps expect.
Route handlers take a ``ChimeRequest``, whose ``request.app.ctx`` is a ``Services``.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import TYPE_CHECKING

from sanic import Request, Sanic
from sanic.config import Config

if TYPE_CHECKING:  # imported for the annotations only: routes import this module
    from channels.answers import Answers
    from channels.generation import Generations
    from channels.hub import Hub
    from channels.limits import Limits
    from channels.peers import RedisPeers
    from channels.presence import Presence
    from channels.store import Store
    from llm.base import Provider
    from metrics import Metrics
    from notify.notifier import Notifier
    from notify.vapid import VapidKeys
    from routes.auth import Users
    from settings import Settings


class Services:
    """``app.ctx``: the settings, the services started with the server and the stop's state."""

    # Set by create_app.
    settings: Settings
    stopping: bool
    stop_runs: dict[str, asyncio.Task[None]]  # each stop step's one run, by name
    owns_process: bool = False  # set by main(): stopping may ignore signals and end a stuck process
    # Set by start_services.
    metrics: Metrics
    hub: Hub
    presence: Presence
    store: Store
    users: Users
    provider: Provider
    generations: Generations
    limits: Limits
    answers: Answers
    vapid: VapidKeys
    notifier: Notifier
    sweeper: asyncio.Task[None]
    peers: RedisPeers  # only with CHIME_REDIS_URL


ChimeApp = Sanic[Config, Services]
ChimeRequest = Request[ChimeApp, SimpleNamespace]
