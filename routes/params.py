"""Parsing of request bodies and parameters into checked values, or the API's 4xx errors."""

from __future__ import annotations

from typing import Any

import orjson

from errors import InvalidJson, InvalidParameter
from services import ChimeRequest


def json_object(request: ChimeRequest) -> dict[str, Any]:
    """The body as a JSON object (400 invalid_json otherwise).

    The content type is not checked: ``sendBeacon`` sends ``text/plain`` and
    ``curl -d`` a form type, and the body alone says what it is.
    """
    try:
        body = orjson.loads(request.body or b"")
    except orjson.JSONDecodeError:
        raise InvalidJson("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidJson("The request body must be a JSON object.")
    return body


def query_value(request: ChimeRequest, name: str) -> str | None:
    """A query parameter's first value, blank included (``?after=`` is a bad value, not a missing one)."""
    return request.get_args(keep_blank_values=True).get(name)


# Past every id a channel could have: SQLite's largest integer. Larger resume points are
# clamped to it, so they mean "past the end" in every store, and in JSON, without overflow.
MAX_EVENT_ID = 2**63 - 1


def non_negative_int(raw: str | None, name: str) -> int | None:
    """An event id as sent on the wire: digits only, no sign, no blanks; huge ones clamp to ``MAX_EVENT_ID``."""
    if raw is None:
        return None
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit():
        raise InvalidParameter(f"{name} must be a non-negative integer.")
    significant = raw.lstrip("0")
    # Checked on the digits, before int(): Python refuses to parse more than 4300 of them.
    if len(significant) > len(str(MAX_EVENT_ID)):
        return MAX_EVENT_ID
    return min(int(significant or "0"), MAX_EVENT_ID)


def bounded_number(raw: str | None, name: str, low: float, high: float, default: float) -> float:
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidParameter(f"{name} must be a number from {low:g} to {high:g}.") from None
    if not low <= value <= high:  # also refuses nan
        raise InvalidParameter(f"{name} must be a number from {low:g} to {high:g}.")
    return value
