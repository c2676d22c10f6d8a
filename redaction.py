"""Credentials never reach the log.

A token travels in the ``Authorization`` header, the ``chime_token`` cookie or
the ``access_token`` query parameter. Sanic's own messages quote request URLs
("Bad URL: /api/...?access_token=..."), exception texts quote header values,
and a log file outlives the token's secrecy. So every log record, whoever
writes it, has those values replaced before any handler formats it: the
process-wide record factory is the one place every logger passes through,
including loggers and handlers configured after this is installed.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "[redacted]"

# The query parameter (its name may arrive percent-encoded) and the cookie, in URLs and
# in dict or tuple reprs; a bearer credential; whole Authorization and Cookie header values.
_SECRETS = re.compile(
    r"""(?P<keep>(?:access(?:_|%5f)token|chime_token)(?:=|['"]\s*[:,]\s*[\[(]?\s*['"]))[^&;\s'"#]*"""
    r"""|(?P<keep2>\bbearer\s+)[^\s'",;]+"""
    r"""|(?P<keep3>\b(?:authorization|cookie)(?:['"]?\s*[:=]|['"],)\s*['"]?)[^'"\r\n]*""",
    re.IGNORECASE,
)

_TRACEBACKS = logging.Formatter()


def redact(text: str) -> str:
    """``text`` with every credential value replaced by ``[redacted]``."""
    return _SECRETS.sub(_keep_the_name, text)


def _keep_the_name(match: re.Match[str]) -> str:
    return (match["keep"] or match["keep2"] or match["keep3"]) + REDACTED


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """The record with its message, traceback and stack redacted.

    ``extra`` fields are set on a record after the factory made it, so they are
    not covered: Sanic's access log, which puts the URL there, stays off (app.py).
    """
    try:
        message = record.getMessage()
    except Exception:  # a caller's bad format arguments: logging reports those itself
        return record
    cleaned = redact(message)
    if cleaned != message:
        record.msg, record.args = cleaned, None
    if record.exc_info and record.exc_info[1] is not None:
        # Formatters reuse exc_text when it is set, so the traceback is formatted once, here.
        record.exc_text = redact(_TRACEBACKS.formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


def install() -> None:
    """Redact every log record made in this process from now on (idempotent)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacts_credentials", False):
        return

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return redact_record(previous(*args, **kwargs))

    make_record.redacts_credentials = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make_record)
