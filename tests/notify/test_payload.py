"""The push payload and Topic."""

from __future__ import annotations

import base64
import os
import re

import http_ece
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from notify.payload import BODY_CHARS, MAX_ENCRYPTED_BYTES, MAX_TITLE_CHARS, build_payload, topic_for


def test_the_body_is_exactly_the_first_120_characters() -> None:
    answer = "  Leading spaces stay. " + "é" * 200
    payload = orjson.loads(build_payload("ch", "done", answer, "Why is the sky blue?"))
    assert payload == {"title": "Your answer is ready: Why is the sky blue?", "body": answer[:BODY_CHARS],
                       "url": "/c/ch", "channel": "ch", "status": "done"}
    assert len(payload["body"]) == 120


def test_a_short_answer_is_the_whole_body() -> None:
    assert orjson.loads(build_payload("ch", "done", "Yes.", None))["body"] == "Yes."


def test_characters_are_code_points_not_bytes_or_utf16_units() -> None:
    answer = "😀" * 130
    assert orjson.loads(build_payload("ch", "done", answer, None))["body"] == "😀" * 120


@pytest.mark.parametrize("status", ["done", "error", "cancelled", "interrupted"])
def test_an_empty_answer_gets_a_status_line(status: str) -> None:
    payload = orjson.loads(build_payload("ch", status, "", "T"))
    assert payload["status"] == status
    assert payload["body"] and len(payload["body"]) <= BODY_CHARS
    assert payload["title"].endswith(": T")


def test_a_failed_answer_keeps_its_partial_text_and_says_so_in_the_title() -> None:
    payload = orjson.loads(build_payload("ch", "error", "Partial", "Q"))
    assert payload["body"] == "Partial" and payload["title"] == "Your answer failed: Q"


def test_a_long_title_is_cut() -> None:
    title = orjson.loads(build_payload("ch", "done", "x", "t" * 300))["title"]
    assert len(title) == MAX_TITLE_CHARS and title.endswith("…")


def test_the_worst_case_payload_encrypts_under_the_push_size_limit() -> None:
    """Control characters escape to six bytes each in JSON: still far below 4096 encrypted."""
    payload = build_payload("c" * 22, "interrupted", "\x01" * 500, "\x02" * 80)
    receiver = ec.generate_private_key(ec.SECP256R1())
    encrypted = http_ece.encrypt(payload, private_key=ec.generate_private_key(ec.SECP256R1()),
                                 dh=receiver.public_key(), auth_secret=os.urandom(16), version="aes128gcm")
    assert len(encrypted) <= MAX_ENCRYPTED_BYTES


def test_the_topic_is_32_base64url_characters_and_depends_on_the_channel() -> None:
    topic = topic_for("abc")
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", topic)
    assert topic == topic_for("abc") and topic != topic_for("abd")
    assert "abc" not in base64.urlsafe_b64decode(topic).decode("latin-1")
