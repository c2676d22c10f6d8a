"""The completion hook: one push to each of the owner's subscriptions when nobody watched the end.

``on_completion`` runs inside ``Generations.finish`` after the terminal event
is durable and readers are woken. It only decides and schedules: the sending
is a background task owned by the ``Notifier`` (cancelled on ``stop``), so a
slow, dead or hostile push service can never delay or break an answer.

Per subscription: 2xx is delivered; 404 and 410 mean the subscription is gone
(deleted, never tried again); 429, 5xx and network failures are retried with
exponential backoff (``Retry-After`` honoured, capped) a bounded number of
times; anything else is given up. Every outcome is counted for ``/metrics``
and logged with the endpoint's origin only: the rest of its URL is a secret.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass

from channels.generation import Completion
from channels.store import PushSubscription, Store
from metrics import Metrics
from notify.addresses import RefusedEndpoint, parse_endpoint
from notify.payload import build_payload, topic_for
from notify.sender import PushSender, SendResult

log = logging.getLogger("chime.push")

GONE_STATUSES = (404, 410)
RATE_LIMITED_STATUS = 429
MAX_RETRY_DELAY_S = 60.0
MAX_CONCURRENT_SENDS = 16
# Completions waiting to be pushed; beyond this, new ones are dropped (and
# counted) rather than letting a dead push service grow memory without bound.
MAX_PENDING_NOTIFICATIONS = 1_000

SENT_METRIC = "chime_push_sends_total"
SENT_HELP = "Pushes by final outcome: delivered, gone, rejected, failed, blocked, error."
RETRY_METRIC = "chime_push_retries_total"
RETRY_HELP = "Push attempts retried, by cause: rate_limited, server_error, network."
SKIPPED_METRIC = "chime_push_skipped_total"
SKIPPED_HELP = "Answers that ended without a push, by reason: watched, no_subscriptions, overloaded."


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` in all; the n-th retry waits ``base_s * 2**n`` (jittered) or ``Retry-After``, capped."""

    attempts: int = 4
    base_s: float = 1.0
    max_delay_s: float = MAX_RETRY_DELAY_S

    def delay_s(self, retry: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return min(retry_after_s, self.max_delay_s)
        backoff = self.base_s * 2.0 ** retry
        return min(backoff * random.uniform(1.0, 1.5), self.max_delay_s)


class Notifier:
    def __init__(self, store: Store, sender: PushSender, metrics: Metrics, *, ttl_s: int,
                 retry: RetryPolicy = RetryPolicy()):
        self.store = store
        self.sender = sender
        self.metrics = metrics
        self.ttl_s = ttl_s
        self.retry = retry
        self._tasks: set[asyncio.Task[None]] = set()
        self._sending = asyncio.Semaphore(MAX_CONCURRENT_SENDS)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def on_completion(self, completion: Completion) -> None:
        """The hook: skip a watched ending, else schedule the pushes and return at once."""
        if completion.watched:
            self._skipped("watched")
            return
        if len(self._tasks) >= MAX_PENDING_NOTIFICATIONS:
            self._skipped("overloaded")
            log.warning("dropped the push for %s: %d pushes still pending", completion.channel, len(self._tasks))
            return
        task = asyncio.get_running_loop().create_task(
            self._notify(completion), name=f"chime-push-{completion.channel}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self, grace_s: float) -> None:
        """Let pending pushes finish for up to ``grace_s``, cancel the rest, close the sender."""
        if self._tasks and grace_s > 0:
            await asyncio.wait(list(self._tasks), timeout=grace_s)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        await self.sender.close()

    # ---- the background work ---------------------------------------------

    async def _notify(self, completion: Completion) -> None:
        try:
            subscriptions = await self.store.subscriptions_for(completion.user_id)
            if not subscriptions:
                self._skipped("no_subscriptions")
                return
            payload = await self._payload(completion)
            topic = topic_for(completion.channel)
            await asyncio.gather(*(self._deliver(subscription, payload, topic, completion.channel)
                                   for subscription in subscriptions))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pushing the end of %s failed", completion.channel)

    async def _payload(self, completion: Completion) -> bytes:
        content = await self.store.channel_content(completion.channel)
        title = None
        record = await self.store.get_channel(completion.channel)
        if record is not None:
            conversation = await self.store.get_conversation(record.conversation_id)
            title = conversation.title if conversation is not None else None
        return build_payload(completion.channel, completion.status, content, title)

    async def _deliver(self, subscription: PushSubscription, payload: bytes, topic: str, channel: str) -> None:
        origin = origin_of(subscription.endpoint)
        try:
            outcome = await self._attempts(subscription, payload, topic, origin)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("push to %s for %s failed", origin, channel)
            outcome = "error"
        self.metrics.inc(SENT_METRIC, help=SENT_HELP, outcome=outcome)
        log.log(logging.INFO if outcome in ("delivered", "gone") else logging.WARNING,
                "push to %s for %s: %s", origin, channel, outcome)

    async def _attempts(self, subscription: PushSubscription, payload: bytes, topic: str, origin: str) -> str:
        """Try, retry what may pass later, and return the final outcome."""
        for attempt in range(self.retry.attempts):
            async with self._sending:
                result = await self.sender.send(subscription, payload, topic=topic, ttl_s=self.ttl_s)
            outcome = final_outcome(result)
            if outcome == "gone":
                await self.store.delete_subscription(subscription.endpoint, subscription.user_id)
            if outcome is not None:
                return outcome
            if attempt + 1 == self.retry.attempts:
                break
            cause = retry_cause(result)
            delay_s = self.retry.delay_s(attempt, result.retry_after_s)
            self.metrics.inc(RETRY_METRIC, help=RETRY_HELP, cause=cause)
            log.info("push to %s: %s (%s), retrying in %.1fs", origin, cause, result.status or result.error, delay_s)
            await asyncio.sleep(delay_s)
        return "failed"

    def _skipped(self, reason: str) -> None:
        self.metrics.inc(SKIPPED_METRIC, help=SKIPPED_HELP, reason=reason)


def final_outcome(result: SendResult) -> str | None:
    """The outcome when the attempt settles it; None when it should be retried."""
    if result.blocked:
        return "blocked"
    if result.delivered:
        return "delivered"
    if result.status in GONE_STATUSES:
        return "gone"
    if result.status is None or result.status == RATE_LIMITED_STATUS or result.status >= 500:
        return None
    return "rejected"


def retry_cause(result: SendResult) -> str:
    if result.status is None:
        return "network"
    return "rate_limited" if result.status == RATE_LIMITED_STATUS else "server_error"


def origin_of(url: str) -> str:
    """What of an endpoint may be logged: its origin (the path and query are the secret)."""
    try:
        return parse_endpoint(url, allow_private=True).origin
    except RefusedEndpoint:
        return "<invalid endpoint>"
