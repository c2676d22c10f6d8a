"""Reading a ``Retry-After`` header, as a model endpoint or a push service sends it."""

from __future__ import annotations

import re
import time
from email.utils import parsedate_to_datetime

_SECONDS = re.compile(r"\d+(\.\d+)?")


def parse_retry_after(raw: str | None, now: float | None = None) -> float | None:
    """Seconds from now: a number of seconds or an HTTP date; None when absent or unusable."""
    if raw is None:
        return None
    raw = raw.strip()
    if _SECONDS.fullmatch(raw):
        return float(raw)
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
