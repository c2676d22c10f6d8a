"""Per-user limits with a fake clock: running answers at once, submissions per minute."""

from __future__ import annotations

import pytest

from channels.limits import Limits
from errors import RateLimited


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def make(max_running: int = 2, per_minute: int = 3) -> tuple[Limits, dict[str, int], Clock]:
    running: dict[str, int] = {}
    clock = Clock()
    return Limits(max_running, per_minute, lambda user: running.get(user, 0), clock), running, clock


def retry_after(exc: pytest.ExceptionInfo[RateLimited]) -> int:
    return int(exc.value.headers["Retry-After"])


def test_running_answers_are_limited_per_user() -> None:
    limits, running, _ = make(max_running=2, per_minute=100)
    running["alice"] = 2
    with pytest.raises(RateLimited) as refused:
        limits.check("alice")
    assert refused.value.status_code == 429 and refused.value.code == "rate_limited"
    assert retry_after(refused) == 1
    limits.check("bob")
    running["alice"] = 1
    limits.check("alice")


def test_submissions_per_minute_slide_with_the_window() -> None:
    limits, _, clock = make(per_minute=3)
    for _ in range(3):
        with limits.admit("alice"):
            pass
        clock.now += 10
    with pytest.raises(RateLimited) as refused:
        limits.check("alice")
    assert retry_after(refused) == 30  # the first of the three leaves the window at +60 s
    clock.now += 30
    limits.check("alice")


def test_retry_after_is_at_least_one_second() -> None:
    limits, _, clock = make(per_minute=1)
    with limits.admit("alice"):
        pass
    clock.now += 59.9
    with pytest.raises(RateLimited) as refused:
        limits.check("alice")
    assert retry_after(refused) == 1


def test_an_admission_holds_a_running_slot_until_its_block_ends() -> None:
    limits, running, _ = make(max_running=2, per_minute=100)
    with limits.admit("alice"), limits.admit("alice"):
        # Neither generation has started yet, but both slots are taken.
        with pytest.raises(RateLimited):
            limits.check("alice")
        running["alice"] = 2
    with pytest.raises(RateLimited):
        limits.check("alice")
    running["alice"] = 0
    with limits.admit("alice"):
        pass


def test_a_refused_admission_reserves_nothing() -> None:
    limits, _, _ = make(max_running=1, per_minute=2)
    with limits.admit("alice"):
        with pytest.raises(RateLimited):
            with limits.admit("alice"):
                pass
    assert len(limits._recent["alice"]) == 1
    with limits.admit("alice"):
        pass


def test_a_failed_submission_gives_its_slot_back() -> None:
    limits, _, _ = make(max_running=1, per_minute=100)
    with pytest.raises(RuntimeError):
        with limits.admit("alice"):
            raise RuntimeError("the store failed")
    with limits.admit("alice"):
        pass


def test_quiet_users_leave_the_table() -> None:
    limits, _, clock = make()
    with limits.admit("alice"):
        pass
    clock.now += 61
    limits.check("alice")
    assert "alice" not in limits._recent
