"""The UI message stream's parts: a fixed function of the channel's log (routes/encoders/ai_sdk.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from channels.events import Event
from routes.encoders import ai_sdk as wire

CHANNEL = "channel-a"


def log(*entries: tuple[str, dict[str, Any]]) -> list[Event]:
    return [Event.make(CHANNEL, index, kind, data) for index, (kind, data) in enumerate(entries, start=1)]


def answer(terminal: str, data: dict[str, Any], *, usage: bool = True) -> list[Event]:
    entries: list[tuple[str, dict[str, Any]]] = [("meta", {"channel": CHANNEL}), ("delta", {"content": "Hi"}),
                                                 ("delta", {"content": " there"})]
    if usage:
        entries.append(("usage", {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}))
    return log(*entries, (terminal, data))


def read(body: bytes) -> list[tuple[int | None, Any]]:
    """``(id, part)`` for each SSE block; ``[DONE]`` has no id."""
    blocks = []
    for block in body.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if fields:
            data = fields["data"]
            blocks.append((int(fields["id"]) if "id" in fields else None,
                           data if data == "[DONE]" else orjson.loads(data)))
    return blocks


def test_a_finished_answer_is_start_text_finish_and_done_with_ids_0_to_n() -> None:
    blocks = read(wire.encode(answer("done", {"finish_reason": "stop"})))
    assert [part["type"] if part != "[DONE]" else part for _, part in blocks] == [
        "start", "text-start", "text-delta", "text-delta", "data-usage", "text-end", "finish", "[DONE]"]
    assert [index for index, _ in blocks] == [0, 1, 2, 3, 4, 5, 6, None]
    assert blocks[0][1] == {"type": "start", "messageId": CHANNEL}
    assert "".join(part["delta"] for _, part in blocks if part != "[DONE]" and part["type"] == "text-delta") \
        == "Hi there"
    assert blocks[4][1]["transient"] is True
    assert blocks[6][1] == {"type": "finish", "finishReason": "stop"}


@pytest.mark.parametrize(("terminal", "data", "last"), [
    ("error", {"code": "model_error", "message": "The model failed."},
     {"type": "error", "errorText": "The model failed."}),
    ("interrupted", {"reason": "server_lost"},
     {"type": "error", "errorText": wire.INTERRUPTIONS["server_lost"]}),
    ("cancelled", {}, {"type": "abort"}),
    ("done", {"finish_reason": "content_filter"}, {"type": "finish", "finishReason": "content-filter"}),
    ("done", {"finish_reason": "something new"}, {"type": "finish", "finishReason": "other"}),
])
def test_each_terminal_ends_the_text_then_the_answer(terminal: str, data: dict[str, Any],
                                                      last: dict[str, Any]) -> None:
    blocks = read(wire.encode(answer(terminal, data, usage=False)))
    assert blocks[-3][1] == {"type": "text-end", "id": wire.TEXT_ID}
    assert blocks[-2] == (5, last) and blocks[-1] == (None, "[DONE]")
    assert [index for index, _ in blocks[:-1]] == list(range(6))


def test_the_bytes_are_the_same_on_every_read_and_built_once() -> None:
    events = answer("done", {"finish_reason": "stop"})
    first = wire.encode(events)
    again = answer("done", {"finish_reason": "stop"})  # the same log, read afresh from the store
    assert wire.encode(again) == first
    assert all(wire.frame(event) is wire.frame(event) for event in events)
    assert b"".join(wire.encode([event]) for event in events) == first


@pytest.mark.parametrize("finished", [True, False])
def test_the_last_part_follows_from_the_last_event_id(finished: bool) -> None:
    events = answer("done", {"finish_reason": "stop"})
    if not finished:
        events = events[:-1]
    indices = [index for index, _ in read(wire.encode(events)) if index is not None]
    assert indices[-1] == wire.last_part(events[-1].id, finished)


def test_a_stream_from_any_part_is_the_rest_of_the_whole() -> None:
    events = answer("done", {"finish_reason": "stop"})
    whole = read(wire.encode(events))
    for first in range(len(whole) - 1):  # every part ([DONE] is not one)
        after = wire.after_event(first)
        rest = [event for event in events if event.id > after]
        assert read(wire.encode_from(first)(rest)) == whole[first:], first


def test_a_batch_wholly_before_the_first_part_writes_a_comment_not_nothing() -> None:
    events = answer("done", {"finish_reason": "stop"})
    assert wire.encode_from(4)([events[2]]) == wire.NOTHING_YET  # part 3 only
    assert read(wire.NOTHING_YET) == []
