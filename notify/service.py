"""Wiring push notifications into the app: ``start`` on server start, ``stop`` on close."""

from __future__ import annotations

import logging

from sanic import Sanic

from notify.notifier import Notifier, RetryPolicy
from notify.sender import WebPushSender
from notify.vapid import VapidKeys
from settings import Settings

log = logging.getLogger("chime.push")


async def start(app: Sanic) -> None:
    """Load (or make) the VAPID keys and register the completion hook.

    Needs ``ctx.store``, ``ctx.metrics`` and ``ctx.generations``; sets
    ``ctx.vapid`` and ``ctx.notifier``.
    """
    ctx = app.ctx
    settings: Settings = ctx.settings
    ctx.vapid = VapidKeys.load_or_create(settings.data_dir)
    sender = WebPushSender(ctx.vapid, settings.vapid_subject, allow_private=settings.push_allow_private,
                           timeout_s=settings.push_timeout_s)
    retry = RetryPolicy(attempts=settings.push_retries + 1, base_s=settings.push_retry_base_s)
    ctx.notifier = Notifier(ctx.store, sender, ctx.metrics, ttl_s=settings.push_ttl_s, retry=retry)
    ctx.generations.completion_hooks.append(ctx.notifier.on_completion)
    ctx.metrics.gauge("chime_push_pending", "Answers whose pushes are still being sent.",
                      lambda: ctx.notifier.pending)
    if settings.push_allow_private:
        log.warning("CHIME_PUSH_ALLOW_PRIVATE is on: push endpoints may be private or plain http")


async def stop(app: Sanic) -> None:
    """Give pending pushes the shutdown grace period, then cancel them and close the sender."""
    notifier: Notifier | None = getattr(app.ctx, "notifier", None)
    if notifier is not None:
        await notifier.stop(app.ctx.settings.shutdown_grace_s)
