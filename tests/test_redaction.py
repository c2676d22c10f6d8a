"""No credential reaches the log, whoever writes the record and however it quotes the request."""

from __future__ import annotations

import logging

import pytest

import redaction

TOKEN = "q1w2E3r4T5y6U7i8O9p0-AsDfGhJkL_zXcVbNm12345"  # the shape of an issued token


@pytest.mark.parametrize("text", [
    f"Bad URL: /api/channels/x/events?last_event_id=3&access_token={TOKEN}",
    f"Request: GET http://127.0.0.1/api/x?ACCESS%5FTOKEN={TOKEN}&a=b stopped",
    f"invalid url b'/api/x\\x00?access_token={TOKEN}'",
    f"{{'access_token': ['{TOKEN}']}}",
    f"Authorization: Bearer {TOKEN}\r\nHost: x",
    f"Header({{'authorization': 'Basic {TOKEN}', 'cookie': 'a=b; chime_token={TOKEN}'}})",
    f"[('cookie', 'chime_token={TOKEN}')]",
    f"Set-Cookie: chime_token={TOKEN}; Path=/; HttpOnly",
    f"bearer {TOKEN}",
])
def test_every_way_a_token_is_quoted_is_redacted(text: str) -> None:
    cleaned = redaction.redact(text)
    assert TOKEN not in cleaned and TOKEN[:12] not in cleaned
    assert redaction.REDACTED in cleaned


def test_what_is_not_a_credential_is_left_alone() -> None:
    text = "GET /api/channels/AbC/events?last_event_id=5&wait=1 from 127.0.0.1: the cookie, or else"
    assert redaction.redact(text) == text


def test_installed_it_redacts_messages_arguments_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    redaction.install()
    redaction.install()  # idempotent: one factory, not two stacked
    assert getattr(logging.getLogRecordFactory(), "redacts_credentials", False)
    logger = logging.getLogger("tests.redaction")
    with caplog.at_level(logging.INFO, logger="tests.redaction"):
        logger.info("GET %s", f"/api/x?access_token={TOKEN}")
        try:
            raise ValueError(f"bad header Authorization: Bearer {TOKEN}")
        except ValueError:
            logger.exception("failed")
    first, second = caplog.records
    assert first.getMessage() == f"GET /api/x?access_token={redaction.REDACTED}"
    assert TOKEN not in logging.Formatter().format(second)
    assert second.exc_text is not None and "ValueError" in second.exc_text
