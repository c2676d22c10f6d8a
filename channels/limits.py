"""Per-user limits: answers running at once, and submissions per minute."""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Callable

from errors import RateLimited

WINDOW_S = 60.0


class Limits:
    def __init__(self, max_running: int, per_minute: int, running_for: Callable[[str], int],
                 clock: Callable[[], float] = time.monotonic):
        self.max_running = max_running
        self.per_minute = per_minute
        self.running_for = running_for
        self.clock = clock
        self._recent: dict[str, deque[float]] = {}

    def check(self, user_id: str) -> None:
        """Raise 429 rate_limited (with Retry-After) when the user may not submit now."""
        if self.running_for(user_id) >= self.max_running:
            raise RateLimited(f"You already have {self.max_running} answers running: "
                              "wait for one to finish or cancel it.", retry_after_s=1)
        recent = self._window(user_id)
        if not recent:
            self._recent.pop(user_id, None)  # keep the table to recently active users
        elif len(recent) >= self.per_minute:
            wait_s = math.ceil(recent[0] + WINDOW_S - self.clock())
            raise RateLimited(f"At most {self.per_minute} questions a minute: "
                              f"try again in {max(1, wait_s)} s.", retry_after_s=wait_s)

    def record(self, user_id: str) -> None:
        self._recent.setdefault(user_id, deque()).append(self.clock())

    def _window(self, user_id: str) -> deque[float]:
        recent = self._recent.get(user_id, deque())
        horizon = self.clock() - WINDOW_S
        while recent and recent[0] <= horizon:
            recent.popleft()
        return recent
