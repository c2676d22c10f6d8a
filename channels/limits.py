"""Per-user limits: answers running at once, and submissions per minute.

``admit`` checks and reserves in one synchronous step, so concurrent
submissions of one user cannot all pass the check before any of them starts:
the reservation counts as a running answer until the ``with`` block ends, by
which time the generation is running (and counted by ``running_for``) or the
submission failed.
"""

from __future__ import annotations

import math
import time
from collections import deque
from contextlib import contextmanager
from typing import Callable, Iterator

from errors import RateLimited

WINDOW_S = 60.0
# A full running limit frees up when an answer ends: ask to retry soon.
RUNNING_RETRY_AFTER_S = 1


class Limits:
    def __init__(self, max_running: int, per_minute: int, running_for: Callable[[str], int],
                 clock: Callable[[], float] = time.monotonic):
        self.max_running = max_running
        self.per_minute = per_minute
        self.running_for = running_for
        self.clock = clock
        self._recent: dict[str, deque[float]] = {}
        self._starting: dict[str, int] = {}

    @contextmanager
    def admit(self, user_id: str) -> Iterator[None]:
        """Check, then hold a running slot and count the submission, until the block ends.

        Raises 429 rate_limited (with Retry-After) before reserving anything.
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
        """Raise 429 rate_limited (with Retry-After) when the user may not submit now."""
        if self.running_for(user_id) + self._starting.get(user_id, 0) >= self.max_running:
            raise RateLimited(f"You already have {self.max_running} answers running: "
                              "wait for one to finish or cancel it.", retry_after_s=RUNNING_RETRY_AFTER_S)
        recent = self._window(user_id)
        if not recent:
            self._recent.pop(user_id, None)  # keep the table to recently active users
        elif len(recent) >= self.per_minute:
            wait_s = math.ceil(recent[0] + WINDOW_S - self.clock())
            raise RateLimited(f"At most {self.per_minute} questions a minute: "
                              f"try again in {max(1, wait_s)} s.", retry_after_s=wait_s)

    def record(self, user_id: str) -> None:
        """Count a submission in the user's one-minute window."""
        self._recent.setdefault(user_id, deque()).append(self.clock())

    def _window(self, user_id: str) -> deque[float]:
        recent = self._recent.get(user_id, deque())
        horizon = self.clock() - WINDOW_S
        while recent and recent[0] <= horizon:
            recent.popleft()
        return recent
