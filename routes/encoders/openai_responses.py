"""OpenAI's Responses API (API.md, "/v1"): a channel as a Response object and as its event stream.

A response id names one channel (``resp_<channel>``). The stream is a fixed
function of the channel's log, so every read of it, before or after a restart,
numbers the same events the same way:

========================  ==================================================  ===========
log event                 Responses events                                    sequence
========================  ==================================================  ===========
``meta`` (id 1)           ``response.created``, ``response.in_progress``,     0, 1, 2, 3
                          ``response.output_item.added``,
                          ``response.content_part.added``
each ``delta``            ``response.output_text.delta``                      the next one
``usage``                 none (it is in the final Response)                  --
the terminal event        ``response.output_text.done``,                      the next four
                          ``response.content_part.done``,
                          ``response.output_item.done``, then one of
                          ``response.completed`` / ``.failed`` / ``.incomplete``
========================  ==================================================  ===========

So the delta that is the k-th of its channel (from 0) is number 4 + k, and a
channel with D deltas ends at 7 + D. ``done`` is ``response.completed``, or
``response.incomplete`` when the model stopped at its token limit; ``error``
is ``response.failed``; ``interrupted`` is ``response.incomplete``; and
``cancelled`` is ``response.incomplete`` whose Response has status
``cancelled``.

An event's frames are built once and kept on the event (``take_slot``), for
every reader whose Response says what a read-back says (``READ_BACK``); the
request's own stream, which echoes what it asked, builds its own frames for
the three events that carry a whole Response.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import orjson

from channels.events import (
    CANCELLED,
    DELTA,
    DONE,
    ERROR,
    INTERRUPTED,
    META,
    USAGE,
    Event,
)
from routes.encoders import StreamEncoder, remember, take_slot

CONTENT_TYPE = "text/event-stream; charset=utf-8"
HEADERS = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}
KEEPALIVE = b": keepalive\n\n"
# What a batch that has no Responses event of its own is written as (a lone ``usage``, or
# events a resume skips): an empty HTTP chunk would end the response.
NOTHING = b":\n\n"

SLOT = take_slot("openai_responses")

RESPONSE_ID_PREFIX = "resp_"
ITEM_ID_PREFIX = "msg_"
META_EVENTS = 4
TERMINAL_EVENTS = 4

# Chime's error codes that have an OpenAI ``ResponseError`` code of their own; the rest are ``server_error``.
_ERROR_CODES = {"rate_limited": "rate_limit_exceeded"}
_LENGTH_FINISH = "length"


def response_id(channel: str) -> str:
    return RESPONSE_ID_PREFIX + channel


def channel_of(response_id: str) -> str | None:
    """The channel a response id names; None for an id this server never gives."""
    if not response_id.startswith(RESPONSE_ID_PREFIX) or len(response_id) == len(RESPONSE_ID_PREFIX):
        return None
    return response_id[len(RESPONSE_ID_PREFIX):]


@dataclass(frozen=True, slots=True)
class Echo:
    """What a Response repeats of the request that made it.

    The store keeps no request parameters, so a Response read back later
    (``READ_BACK``) says ``background: true`` — every Chime answer runs on
    whoever reads it — and nothing of the rest.
    """

    background: bool = True
    instructions: str | None = None
    temperature: float | None = None
    max_output_tokens: int | None = None


READ_BACK = Echo()


@dataclass(frozen=True, slots=True)
class ResponseFacts:
    """What a channel's Responses say besides its log: fixed for the channel."""

    channel: str
    model: str
    created_at: int  # seconds since the epoch
    previous_response_id: str | None
    echo: Echo = READ_BACK

    @property
    def id(self) -> str:
        return response_id(self.channel)

    @property
    def item_id(self) -> str:
        return ITEM_ID_PREFIX + self.channel

    def echoing(self, echo: Echo) -> ResponseFacts:
        return replace(self, echo=echo)


# ---- the Response object ------------------------------------------------------------

def usage_object(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chime's ``usage`` (chat completion counts) as a Responses ``usage``."""
    if not usage:
        return None
    input_tokens = _count(usage.get("prompt_tokens"))
    output_tokens = _count(usage.get("completion_tokens"))
    total = usage.get("total_tokens")
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": _count(total) if total is not None else input_tokens + output_tokens,
    }


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(facts: ResponseFacts, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": facts.item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def response_object(facts: ResponseFacts, status: str, output: list[dict[str, Any]], *,
                    usage: dict[str, Any] | None = None, error: dict[str, Any] | None = None,
                    incomplete_details: dict[str, Any] | None = None) -> dict[str, Any]:
    echo = facts.echo
    return {
        "id": facts.id,
        "object": "response",
        "created_at": facts.created_at,
        "status": status,
        "background": echo.background,
        "error": error,
        "incomplete_details": incomplete_details,
        "instructions": echo.instructions,
        "max_output_tokens": echo.max_output_tokens,
        "model": facts.model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": facts.previous_response_id,
        "temperature": echo.temperature,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": None,
        "truncation": "disabled",
        "usage": usage_object(usage),
        "metadata": {},
    }


@dataclass(frozen=True, slots=True)
class Ending:
    """How a terminal event reads as a Response: its status, final event, and details."""

    status: str
    event_type: str
    item_status: str
    error: dict[str, Any] | None = None
    incomplete_details: dict[str, Any] | None = None


def ending(terminal_type: str, data: dict[str, Any]) -> Ending:
    if terminal_type == DONE:
        if data.get("finish_reason") == _LENGTH_FINISH:
            return Ending("incomplete", "response.incomplete", "incomplete",
                          incomplete_details={"reason": "max_output_tokens"})
        return Ending("completed", "response.completed", "completed")
    if terminal_type == ERROR:
        code = str(data.get("code") or "")
        return Ending("failed", "response.failed", "incomplete", error={
            "code": _ERROR_CODES.get(code, "server_error"), "message": str(data.get("message") or ""),
            "type": code or None, "param": None})
    if terminal_type == CANCELLED:
        return Ending("cancelled", "response.incomplete", "incomplete")
    reason = str(data.get("reason") or "")  # INTERRUPTED
    return Ending("incomplete", "response.incomplete", "incomplete", incomplete_details={"reason": None},
                  error={"code": "server_error", "type": INTERRUPTED, "param": None,
                         "message": f"The server stopped before the answer ended ({reason}); "
                                    "what was produced until then is kept."})


def finished_response(facts: ResponseFacts, terminal_type: str, data: dict[str, Any], text: str,
                      usage: dict[str, Any] | None) -> dict[str, Any]:
    """The Response of a channel that has ended: the same in its final event and read back."""
    end = ending(terminal_type, data)
    return response_object(facts, end.status, [message_item(facts, end.item_status, [output_text(text)])],
                           usage=usage, error=end.error, incomplete_details=end.incomplete_details)


def running_response(facts: ResponseFacts, text: str | None, usage: dict[str, Any] | None = None
                     ) -> dict[str, Any]:
    """A running channel's Response: ``queued`` until its first delta (``text`` None), then ``in_progress``."""
    if text is None:
        return response_object(facts, "queued", [], usage=usage)
    return response_object(facts, "in_progress", [message_item(facts, "in_progress", [output_text(text)])],
                           usage=usage)


# ---- the event stream ---------------------------------------------------------------------

def frame(event_type: str, body: dict[str, Any]) -> bytes:
    """One server-sent event, named like its ``type`` as OpenAI names them."""
    return b"event: %s\ndata: %s\n\n" % (event_type.encode(), orjson.dumps(body))


def _part_event(facts: ResponseFacts, event_type: str, sequence: int, **fields: Any) -> bytes:
    return frame(event_type, {"type": event_type, "sequence_number": sequence, "item_id": facts.item_id,
                              "output_index": 0, "content_index": 0, **fields})


def _lifecycle(event_type: str, sequence: int, response: dict[str, Any]) -> bytes:
    return frame(event_type, {"type": event_type, "sequence_number": sequence, "response": response})


def _item_event(event_type: str, sequence: int, item: dict[str, Any]) -> bytes:
    return frame(event_type, {"type": event_type, "sequence_number": sequence, "output_index": 0, "item": item})


def opening_frames(facts: ResponseFacts) -> list[bytes]:
    """The four events of ``meta``."""
    started = response_object(facts, "in_progress", [])
    return [
        _lifecycle("response.created", 0, started),
        _lifecycle("response.in_progress", 1, started),
        _item_event("response.output_item.added", 2, message_item(facts, "in_progress", [])),
        _part_event(facts, "response.content_part.added", 3, part=output_text("")),
    ]


def delta_frame(facts: ResponseFacts, sequence: int, content: str) -> bytes:
    return _part_event(facts, "response.output_text.delta", sequence, delta=content, logprobs=[])


def closing_frames(facts: ResponseFacts, sequence: int, terminal: Event, text: str,
                   usage: dict[str, Any] | None) -> list[bytes]:
    """The four events of the terminal event, numbered from ``sequence``."""
    end = ending(terminal.type, terminal.data)
    final = finished_response(facts, terminal.type, terminal.data, text, usage)
    return [
        _part_event(facts, "response.output_text.done", sequence, text=text, logprobs=[]),
        _part_event(facts, "response.content_part.done", sequence + 1, part=output_text(text)),
        _item_event("response.output_item.done", sequence + 2,
                    message_item(facts, end.item_status, [output_text(text)])),
        _lifecycle(end.event_type, sequence + 3, final),
    ]


def event_count(event: Event) -> int:
    """How many Responses events a log event stands for (the numbering in the module docstring)."""
    if event.type == META:
        return META_EVENTS
    if event.type == DELTA:
        return 1
    if event.terminal:
        return TERMINAL_EVENTS
    return 0  # usage


class ResponseStream:
    """One reader's Responses stream of a channel, fed the channel's events in order from id 1.

    ``skip_through`` drops every event numbered at or below it (a resume's
    ``starting_after``). Events ``absorb``-ed count towards the numbering and
    the final text without being written: a resume reads the log from the
    start to know where its first event falls, and starts reading the channel
    after the last one absorbed.
    """

    def __init__(self, facts: ResponseFacts, skip_through: int = -1):
        self.facts = facts
        self.skip_through = skip_through
        self.shared = facts.echo == READ_BACK
        self.next_sequence = 0
        self._text: list[str] = []
        self._usage: dict[str, Any] | None = None
        self.finished = False

    def wants(self, event: Event) -> bool:
        """Whether any of ``event``'s Responses events comes after ``skip_through``."""
        return self.next_sequence + event_count(event) - 1 > self.skip_through

    def absorb(self, event: Event) -> None:
        if event.type == DELTA:
            self._text.append(event.data.get("content", ""))
        elif event.type == USAGE:
            self._usage = event.data
        self.next_sequence += event_count(event)
        self.finished = self.finished or event.terminal

    def encode(self, events: list[Event]) -> bytes:
        out = [self._encode_one(event) for event in events]
        payload = b"".join(out)
        return payload or NOTHING

    def _encode_one(self, event: Event) -> bytes:
        first = self.next_sequence
        count = event_count(event)
        wanted = first + count - 1 > self.skip_through
        whole = first > self.skip_through
        built = self._cached(event) if whole and count else None
        if event.type == DELTA:
            content = event.data.get("content", "")
            self._text.append(content)
            if wanted and built is None:
                built = self._remember(event, delta_frame(self.facts, first, content))
        elif event.type == USAGE:
            self._usage = event.data
        elif wanted and built is None:
            frames = self._frames(event, first)
            skipped = max(0, self.skip_through + 1 - first)
            built = b"".join(frames[skipped:]) if skipped else self._remember(event, b"".join(frames))
        self.next_sequence += count
        self.finished = self.finished or event.terminal
        return built if wanted and built is not None else b""

    def _frames(self, event: Event, first: int) -> list[bytes]:
        if event.type == META:
            return opening_frames(self.facts)
        if event.terminal:
            return closing_frames(self.facts, first, event, "".join(self._text), self._usage)
        return []

    def _cached(self, event: Event) -> bytes | None:
        encoded = event.encoded
        if encoded is None or len(encoded) <= SLOT or not (self.shared or event.type == DELTA):
            return None
        return encoded[SLOT]

    def _remember(self, event: Event, built: bytes) -> bytes:
        # Frames with this request's own echo are this reader's alone: only deltas carry none.
        if self.shared or event.type == DELTA:
            return remember(event, SLOT, built)
        return built

    def encoder(self) -> StreamEncoder:
        return StreamEncoder("openai_responses", self.encode, KEEPALIVE)

