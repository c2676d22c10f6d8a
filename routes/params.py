"""Parsing of request bodies and parameters into checked values, or the API's 4xx errors."""

from __future__ import annotations

from typing import Any

import orjson
from sanic import Request

from errors import InvalidJson, InvalidParameter


def json_object(request: Request) -> dict[str, Any]:
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


def query_value(request: Request, name: str) -> str | None:
    """A query parameter's first value, blank included (``?after=`` is a bad value, not a missing one)."""
    return request.get_args(keep_blank_values=True).get(name)


def non_negative_int(raw: str | None, name: str) -> int | None:
    """An event id or count as sent on the wire: digits only, no sign, no blanks."""
    if raw is None:
        return None
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise InvalidParameter(f"{name} must be a non-negative integer.")
    return int(raw)


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
