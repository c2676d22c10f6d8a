"""Per-user limits with a fake clock: running answers at once, submissions per minute."""

from __future__ import annotations

import pytest

from channels.limits import LimitExceeded, Limits


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def make(max_running: int = 2, per_minute: int = 3) -> tuple[Limits, dict[str, int], Clock]:
    running: dict[str, int] = {}
    clock = Clock()
    return Limits(max_running, per_minute, lambda user: running.get(user, 0), clock), running, clock


def retry_after(exc: pytest.ExceptionInfo[LimitExceeded]) -> int:
    return exc.value.retry_after_s


def test_running_answers_are_limited_per_user() -> None:
    limits, running, _ = make(max_running=2, per_minute=100)
    running["alice"] = 2
    with pytest.raises(LimitExceeded) as refused:
        limits.check("alice")
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
    with pytest.raises(LimitExceeded) as refused:
        limits.check("alice")
    assert retry_after(refused) == 30  # the first of the three leaves the window at +60 s
    clock.now += 30
    limits.check("alice")


def test_retry_after_is_at_least_one_second() -> None:
    limits, _, clock = make(per_minute=1)
    with limits.admit("alice"):
        pass
    clock.now += 59.9
    with pytest.raises(LimitExceeded) as refused:
        limits.check("alice")
    assert retry_after(refused) == 1


def test_an_admission_holds_a_running_slot_until_its_block_ends() -> None:
    limits, running, _ = make(max_running=2, per_minute=100)
    with limits.admit("alice"), limits.admit("alice"):
        # Neither generation has started yet, but both slots are taken.
        with pytest.raises(LimitExceeded):
            limits.check("alice")
        running["alice"] = 2
    with pytest.raises(LimitExceeded):
        limits.check("alice")
    running["alice"] = 0
    with limits.admit("alice"):
        pass


def test_a_refused_admission_reserves_nothing() -> None:
    limits, _, _ = make(max_running=1, per_minute=2)
    with limits.admit("alice"):
        with pytest.raises(LimitExceeded):
            with limits.admit("alice"):
                pass
    assert len(limits._submissions._recent["alice"]) == 1
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
    assert "alice" not in limits._submissions._recent


def test_users_who_never_come_back_are_swept_once_a_minute() -> None:
    limits, _, clock = make(per_minute=100)
    for n in range(500):
        with limits.admit(f"one-off-{n}"):
            pass
    assert limits.tracked == 500
    clock.now += 61
    limits.check("someone-else")
    assert limits.tracked == 0


def test_the_whole_service_has_a_cap_on_running_answers() -> None:
    running_total = {"n": 0}
    limits = Limits(10, 100, lambda user: 0, Clock(), max_running_total=2,
                    running_total=lambda: running_total["n"])
    with limits.admit("alice"):
        with limits.admit("bob"):
            with pytest.raises(LimitExceeded) as refused:
                with limits.admit("carol"):
                    pass
    assert "as many questions as it can" in refused.value.message
    assert retry_after(refused) == 1
    running_total["n"] = 2
    with pytest.raises(LimitExceeded):
        limits.check("dave")
    running_total["n"] = 1
    limits.check("dave")


def test_new_users_are_limited_per_address_and_retry_after_is_at_most_a_minute() -> None:
    clock = Clock()
    limits = Limits(4, 30, lambda user: 0, clock, new_users_per_minute=3)
    for _ in range(3):
        limits.admit_new_user("203.0.113.7")
    with pytest.raises(LimitExceeded) as refused:
        limits.admit_new_user("203.0.113.7")
    assert 1 <= retry_after(refused) <= 60
    limits.admit_new_user("198.51.100.1")  # another address is not held back
    clock.now += 61
    limits.admit_new_user("203.0.113.7")
    clock.now += 61
    limits.admit_new_user("198.51.100.2")
    assert limits.tracked == 1  # the quiet addresses were swept
