"""Push notifications assembled from the settings: the VAPID keys and the notifier."""

from __future__ import annotations

import logging

from channels.store import Store
from metrics import Metrics
from notify.notifier import Notifier, RetryPolicy
from notify.sender import WebPushSender
from notify.vapid import VapidKeys
from settings import Settings

log = logging.getLogger("chime.push")


def create(settings: Settings, store: Store, metrics: Metrics,
           vapid: VapidKeys | None = None) -> tuple[VapidKeys, Notifier]:
    """Load (or make) the VAPID keys under the data directory unless given, and build the
    notifier; its ``on_completion`` is the hook to subscribe to answers' endings, and
    ``stop(grace_s)`` ends its pending pushes."""
    vapid = vapid or VapidKeys.load_or_create(settings.data_dir)
    sender = WebPushSender(vapid, settings.vapid_subject, allow_private=settings.push_allow_private,
                           timeout_s=settings.push_timeout_s)
    retry = RetryPolicy(attempts=settings.push_retries + 1, base_s=settings.push_retry_base_s)
    notifier = Notifier(store, sender, metrics, ttl_s=settings.push_ttl_s, retry=retry)
    metrics.gauge("chime_push_pending", "Answers whose pushes are still being sent.", lambda: notifier.pending)
    if settings.push_allow_private:
        log.warning("CHIME_PUSH_ALLOW_PRIVATE is on: push endpoints may be private or plain http")
    return vapid, notifier
