"""Limits: answers running at once (per user and in all), submissions per minute, new users per address.

``admit`` checks and reserves in one synchronous step, so concurrent
submissions cannot all pass the check before any of them starts: the
reservation counts as a running answer until the ``with`` block ends, by
which time the generation is running (and counted by ``running_for`` and
``running_total``) or the submission failed.

Every table here is keyed by something a client chooses (a user, an
address), so each is swept of entries older than its window once a window:
a flood of one-off identities leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Protocol

log = logging.getLogger("chime.limits")

WINDOW_S = 60.0
# A full running limit frees up when an answer ends: ask to retry soon.
RUNNING_RETRY_AFTER_S = 1


class LimitExceeded(Exception):
    """A limit refused the request; ``retry_after_s`` says when trying again may succeed."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class Window:
    """Events per key in a sliding minute; keys with no event in the last minute are dropped."""

    def __init__(self, per_minute: int, clock: Callable[[], float]):
        self.per_minute = per_minute
        self.clock = clock
        self._recent: dict[str, deque[float]] = {}
        self._next_sweep = clock() + WINDOW_S

    def __len__(self) -> int:
        return len(self._recent)

    def wait_s(self, key: str) -> int:
        """0 when ``key`` may act now, else the whole seconds until it may."""
        self._sweep()
        recent = self._trimmed(key)
        if len(recent) < self.per_minute:
            return 0
        return max(1, math.ceil(recent[0] + WINDOW_S - self.clock()))

    def record(self, key: str) -> None:
        self._recent.setdefault(key, deque()).append(self.clock())

    def _trimmed(self, key: str) -> deque[float]:
        recent = self._recent.get(key)
        if recent is None:
            return deque()
        horizon = self.clock() - WINDOW_S
        while recent and recent[0] <= horizon:
            recent.popleft()
        if not recent:
            del self._recent[key]
        return recent

    def _sweep(self) -> None:
        """Once a window, drop every key whose last event left it (O(keys), once a minute)."""
        now = self.clock()
        if now < self._next_sweep:
            return
        self._next_sweep = now + WINDOW_S
        horizon = now - WINDOW_S
        for key in [key for key, recent in self._recent.items() if not recent or recent[-1] <= horizon]:
            del self._recent[key]


class Slot:
    """A running slot held for a submission. In one process the generation counts itself once
    it runs (``running_for``); a shared slot (``SharedLimits``) is kept until it ends."""

    def keep_until(self, generation: asyncio.Future[None]) -> None:
        pass


class Limits:
    def __init__(self, max_running: int, per_minute: int, running_for: Callable[[str], int],
                 clock: Callable[[], float] = time.monotonic, *, max_running_total: int | None = None,
                 running_total: Callable[[], int] = lambda: 0, new_users_per_minute: int | None = None):
        self.max_running = max_running
        self.per_minute = per_minute
        self.running_for = running_for
        self.max_running_total = max_running_total
        self.running_total = running_total
        self.new_users_per_minute = new_users_per_minute
        self.clock = clock
        self._submissions = Window(per_minute, clock)
        self._new_users = Window(new_users_per_minute or 1, clock)
        self._starting: dict[str, int] = {}

    @contextmanager
    def admit(self, user_id: str) -> Iterator[None]:
        """Check, then hold a running slot and count the submission, until the block ends.

        Raises ``LimitExceeded`` before reserving anything.
        """
        self.check(user_id)
        self.record(user_id)
        self._starting[user_id] = self._starting.get(user_id, 0) + 1
        try:
            yield
        finally:
            left = self._starting.pop(user_id) - 1
            if left:
                self._starting[user_id] = left

    def check(self, user_id: str) -> None:
        """Raise ``LimitExceeded`` when the user may not submit now."""
        if self.running_for(user_id) + self._starting.get(user_id, 0) >= self.max_running:
            raise LimitExceeded(f"You already have {self.max_running} answers running: "
                              "wait for one to finish or cancel it.", RUNNING_RETRY_AFTER_S)
        if (self.max_running_total is not None
                and self.running_total() + sum(self._starting.values()) >= self.max_running_total):
            raise LimitExceeded("The server is answering as many questions as it can: try again in a moment.",
                              retry_after_s=RUNNING_RETRY_AFTER_S)
        wait_s = self._submissions.wait_s(user_id)
        if wait_s:
            raise LimitExceeded(f"At most {self.per_minute} questions a minute: "
                              f"try again in {wait_s} s.", wait_s)

    def record(self, user_id: str) -> None:
        """Count a submission in the user's one-minute window."""
        self._submissions.record(user_id)

    def admit_new_user(self, address: str) -> None:
        """Count a new identity made for ``address``; ``LimitExceeded`` (at most 60 s) past the limit."""
        if self.new_users_per_minute is None:
            return
        wait_s = self._new_users.wait_s(address)
        if wait_s:
            raise LimitExceeded(f"At most {self.new_users_per_minute} new users a minute from one address: "
                              f"try again in {wait_s} s.", min(wait_s, int(WINDOW_S)))
        self._new_users.record(address)

    # ---- what the answers service calls: the same for one process and for many ----------

    @asynccontextmanager
    async def admitted(self, user_id: str) -> AsyncIterator[Slot]:
        """``admit`` for the answers service; the slot may be kept for the answer's generation."""
        with self.admit(user_id):
            yield Slot()

    async def new_user(self, address: str) -> None:
        self.admit_new_user(address)

    @property
    def tracked(self) -> int:
        """Keys held in the one-minute windows (for tests and metrics)."""
        return len(self._submissions) + len(self._new_users)


# ---- several processes ---------------------------------------------------------------

class Counters(Protocol):
    """Where the processes of one service keep the limits' counts (``channels.peers`` in Redis).

    ``reserve`` checks and takes a running slot and counts the submission in one atomic
    step: ``None``, or ``(which, retry_after_s)`` for the limit that refused (``running``,
    ``total``, ``per_minute``). Slots of processes that died are not counted.
    """

    async def reserve(self, user_id: str, max_running: int, max_total: int | None,
                      per_minute: int) -> tuple[str, int] | None: ...
    async def unreserve(self, user_id: str) -> None: ...
    async def count_new_user(self, address: str, per_minute: int) -> int:
        """0 when counted, else the whole seconds until ``address`` may make another user."""
        ...


UNRESERVE_ATTEMPTS = 8  # 0.5 + 1 + 2 + 4 + 8 + 15 + 15 s of waiting between them: about 45 s
UNRESERVE_RETRY_FIRST_S = 0.5
UNRESERVE_RETRY_MAX_S = 15.0


class SharedLimits(Limits):
    """The same limits counted across every process of the service (API.md: limits count across
    all of them). A running slot is held from the submission until its generation ends."""

    def __init__(self, counters: Counters, max_running: int, per_minute: int, *,
                 max_running_total: int | None = None, new_users_per_minute: int | None = None):
        super().__init__(max_running, per_minute, lambda _: 0, max_running_total=max_running_total,
                         new_users_per_minute=new_users_per_minute)
        self.counters = counters
        self._releasing: set[asyncio.Task[None]] = set()

    @asynccontextmanager
    async def admitted(self, user_id: str) -> AsyncIterator[Slot]:
        refused = await self.counters.reserve(user_id, self.max_running, self.max_running_total, self.per_minute)
        if refused is not None:
            raise self._refusal(*refused)
        slot = _SharedSlot(self, user_id)
        try:
            yield slot
        except BaseException:
            await self._unreserve(user_id)
            raise
        if not slot.kept:
            await self._unreserve(user_id)

    async def new_user(self, address: str) -> None:
        if self.new_users_per_minute is None:
            return
        wait_s = await self.counters.count_new_user(address, self.new_users_per_minute)
        if wait_s:
            raise LimitExceeded(f"At most {self.new_users_per_minute} new users a minute from one address: "
                                f"try again in {wait_s} s.", min(wait_s, int(WINDOW_S)))

    def _refusal(self, which: str, retry_after_s: int) -> LimitExceeded:
        if which == "running":
            return LimitExceeded(f"You already have {self.max_running} answers running: "
                                 "wait for one to finish or cancel it.", RUNNING_RETRY_AFTER_S)
        if which == "total":
            return LimitExceeded("The server is answering as many questions as it can: try again in a moment.",
                                 retry_after_s=RUNNING_RETRY_AFTER_S)
        return LimitExceeded(f"At most {self.per_minute} questions a minute: "
                             f"try again in {retry_after_s} s.", retry_after_s)

    async def _unreserve(self, user_id: str) -> None:
        """Give a slot back, trying again for about a minute: a slot never given back would
        count against its user for as long as this process lives."""
        delay_s = UNRESERVE_RETRY_FIRST_S
        for attempt in range(UNRESERVE_ATTEMPTS):
            try:
                await self.counters.unreserve(user_id)
                return
            except Exception:
                if attempt == UNRESERVE_ATTEMPTS - 1:
                    log.warning("could not give back a running slot of %s", user_id, exc_info=True)
                    return
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, UNRESERVE_RETRY_MAX_S)

    def _unreserve_later(self, user_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._unreserve(user_id))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)


class _SharedSlot(Slot):
    def __init__(self, limits: SharedLimits, user_id: str):
        self.limits = limits
        self.user_id = user_id
        self.kept = False

    def keep_until(self, generation: asyncio.Future[None]) -> None:
        self.kept = True
        generation.add_done_callback(lambda _: self.limits._unreserve_later(self.user_id))

