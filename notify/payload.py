"""What a push says: the JSON payload and the ``Topic`` header for a finished channel."""

from __future__ import annotations

import base64
import hashlib

import orjson

BODY_CHARS = 120
MAX_TITLE_CHARS = 100

# RFC 8291 aes128gcm adds an 86-byte header, a 16-byte tag and a 1-byte
# padding delimiter; push services accept at most 4096 bytes of body.
MAX_ENCRYPTED_BYTES = 4_096
ENCRYPTION_OVERHEAD_BYTES = 86 + 16 + 1
MAX_PAYLOAD_BYTES = MAX_ENCRYPTED_BYTES - ENCRYPTION_OVERHEAD_BYTES

# RFC 8030: a Topic is at most 32 characters of the base64url alphabet.
TOPIC_CHARS = 32

HEADLINES = {
    "done": "Your answer is ready",
    "error": "Your answer failed",
    "cancelled": "Your answer was cancelled",
    "interrupted": "Your answer was interrupted",
}

EMPTY_BODIES = {
    "done": "The answer is empty.",
    "error": "The answer failed before any text arrived.",
    "cancelled": "The answer was cancelled before any text arrived.",
    "interrupted": "The server stopped before any text arrived.",
}


def build_payload(channel: str, status: str, content: str, conversation_title: str | None) -> bytes:
    """``{"title", "body", "url", "channel", "status"}``; ``body`` is exactly the answer's first 120 characters.

    At most ``MAX_PAYLOAD_BYTES`` whatever the content: the body and the title
    are cut by characters, and even all-escaped JSON of them stays far below.
    """
    payload = orjson.dumps({
        "title": title_for(status, conversation_title),
        "body": content[:BODY_CHARS] if content else EMPTY_BODIES.get(status, "The answer ended."),
        "url": f"/c/{channel}",
        "channel": channel,
        "status": status,
    })
    assert len(payload) <= MAX_PAYLOAD_BYTES, "title and body are cut well below the push size limit"
    return payload


def title_for(status: str, conversation_title: str | None) -> str:
    """The headline for the ending, then the conversation's title so several answers tell apart."""
    headline = HEADLINES.get(status, "Your answer ended")
    if not conversation_title:
        return headline
    title = f"{headline}: {conversation_title}"
    if len(title) > MAX_TITLE_CHARS:
        title = title[:MAX_TITLE_CHARS - 1] + "…"
    return title


def topic_for(channel: str) -> str:
    """A Topic derived from the channel, without showing the channel's id to the push service."""
    digest = hashlib.sha256(b"chime-push-topic:" + channel.encode()).digest()
    return base64.urlsafe_b64encode(digest[:TOPIC_CHARS * 3 // 4]).decode("ascii")
