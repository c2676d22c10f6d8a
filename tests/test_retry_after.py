"""Reading Retry-After, shared by the model provider and the push sender."""

from __future__ import annotations

from retry_after import parse_retry_after


def test_retry_after_is_seconds_or_an_http_date() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 3 ") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("-5") is None
    assert parse_retry_after(None) is None
