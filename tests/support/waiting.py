"""Waiting for a condition with a deadline, never for a fixed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")


class Timeout(AssertionError):
    pass


def wait_until(predicate: Callable[[], T | None], timeout_s: float = 10.0, what: str = "condition",
               interval_s: float = 0.01) -> T:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise Timeout(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


@overload
async def async_wait_until(predicate: Callable[[], Awaitable[T | None]], timeout_s: float = 10.0,
                           what: str = "condition", interval_s: float = 0.01) -> T: ...
@overload
async def async_wait_until(predicate: Callable[[], T | None], timeout_s: float = 10.0,
                           what: str = "condition", interval_s: float = 0.01) -> T: ...
async def async_wait_until(predicate: Callable[[], Awaitable[T | None] | T | None], timeout_s: float = 10.0,
                           what: str = "condition", interval_s: float = 0.01) -> T:
    """Poll ``predicate`` (a coroutine function or not) until it returns a truthy value; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise Timeout(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(interval_s)
