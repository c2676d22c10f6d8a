"""OpenAI chat completions (API.md, "/v1"): a channel as a ``chat.completion`` or its chunk stream.

Each log event is one ``data:`` line: ``meta`` the first chunk (the assistant
role), each ``delta`` a content chunk, ``done`` the chunk with the finish
reason, and ``error``, ``cancelled`` or ``interrupted`` an ``{"error": ...}``
line, which OpenAI's SDKs raise as an ``APIError``. ``usage`` is the chunk
with ``choices: []`` that ``stream_options.include_usage`` asks for; OpenAI
sends it after the finish chunk, so a reader holds it until then. The stream
ends with ``data: [DONE]``. The chunks are the same for every reader of a
channel and are built once (``take_slot``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from channels.events import CANCELLED, DELTA, DONE, ERROR, META, USAGE, Event
from routes.encoders import StreamEncoder, remember, take_slot

CONTENT_TYPE = "text/event-stream; charset=utf-8"
HEADERS = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}
KEEPALIVE = b": keepalive\n\n"
# A batch with nothing to write yet (a lone ``usage``, held for later) is written as a comment:
# an empty HTTP chunk would end the response.
NOTHING = b":\n\n"
DONE_LINE = b"data: [DONE]\n\n"

SLOT = take_slot("openai_chat")

COMPLETION_ID_PREFIX = "chatcmpl-"
# The finish reasons OpenAI's types know; any other a model gives reads as "stop".
FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})


@dataclass(frozen=True, slots=True)
class CompletionFacts:
    """What every chunk of a channel's completion repeats: fixed for the channel."""

    channel: str
    model: str
    created: int  # seconds since the epoch

    @property
    def id(self) -> str:
        return COMPLETION_ID_PREFIX + self.channel


def finish_reason(data: dict[str, Any]) -> str:
    reason = data.get("finish_reason")
    return reason if isinstance(reason, str) and reason in FINISH_REASONS else "stop"


def usage_object(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if not usage:
        return None
    counts = {name: usage.get(name) for name in ("prompt_tokens", "completion_tokens", "total_tokens")}
    return {name: value if isinstance(value, int) and not isinstance(value, bool) else 0
            for name, value in counts.items()}


def failure(terminal_type: str, data: dict[str, Any]) -> tuple[str, str]:
    """``(code, message)`` of an ending that is not ``done``."""
    if terminal_type == ERROR:
        return str(data.get("code") or "model_error"), str(data.get("message") or "The answer failed.")
    if terminal_type == CANCELLED:
        return "cancelled", "The answer was cancelled before it ended; what was produced is kept."
    reason = str(data.get("reason") or "")
    return "interrupted", (f"The server stopped before the answer ended ({reason}); "
                           "what was produced until then is kept.")


def completion(facts: CompletionFacts, text: str, data: dict[str, Any],
               usage: dict[str, Any] | None) -> dict[str, Any]:
    """The ``chat.completion`` of a channel that ended with ``done`` (``data`` is its data)."""
    return {
        "id": facts.id,
        "object": "chat.completion",
        "created": facts.created,
        "model": facts.model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "logprobs": None, "finish_reason": finish_reason(data),
                     "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []}}],
        "usage": usage_object(usage),
    }


def _chunk(facts: CompletionFacts, choices: list[dict[str, Any]], **extra: Any) -> bytes:
    body = {"id": facts.id, "object": "chat.completion.chunk", "created": facts.created, "model": facts.model,
            "system_fingerprint": None, "choices": choices, **extra}
    return b"data: %s\n\n" % orjson.dumps(body)


def _choice(delta: dict[str, Any], reason: str | None = None) -> list[dict[str, Any]]:
    return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]


def line(facts: CompletionFacts, event: Event) -> bytes:
    """The event's ``data:`` line (empty for none)."""
    if event.type == DELTA:
        return _chunk(facts, _choice({"content": event.data.get("content", "")}))
    if event.type == META:
        return _chunk(facts, _choice({"role": "assistant", "content": ""}))
    if event.type == USAGE:
        return _chunk(facts, [], usage=usage_object(event.data))
    if event.type == DONE:
        return _chunk(facts, _choice({}, finish_reason(event.data)))
    if event.terminal:
        code, message = failure(event.type, event.data)
        return b"data: %s\n\n" % orjson.dumps({"error": {"message": message, "type": "server_error",
                                                          "param": None, "code": code}})
    return b""


class ChunkStream:
    """One reader's chunk stream of a channel; ``include_usage`` as the request's ``stream_options`` said."""

    def __init__(self, facts: CompletionFacts, include_usage: bool):
        self.facts = facts
        self.include_usage = include_usage
        self._usage_line = b""

    def encode(self, events: list[Event]) -> bytes:
        payload = b"".join([self._encode_one(event) for event in events])
        return payload or NOTHING

    def _encode_one(self, event: Event) -> bytes:
        built = self._line(event)
        if event.type == USAGE:
            self._usage_line = built if self.include_usage else b""
            return b""
        if event.terminal:
            held, self._usage_line = self._usage_line, b""
            return built + (held if event.type == DONE else b"") + DONE_LINE
        return built

    def _line(self, event: Event) -> bytes:
        encoded = event.encoded
        if encoded is not None and len(encoded) > SLOT:
            cached = encoded[SLOT]
            if cached is not None:
                return cached
        return remember(event, SLOT, line(self.facts, event))

    def encoder(self) -> StreamEncoder:
        return StreamEncoder("openai_chat", self.encode, KEEPALIVE)
