"""The /v1 encoders alone: every frame is what OpenAI's SDK types accept, and the numbering is fixed by the log."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from channels.events import Event
from routes.encoders import openai_chat, openai_responses
from routes.encoders.openai_chat import ChunkStream, CompletionFacts
from routes.encoders.openai_responses import Echo, ResponseFacts, ResponseStream

CHANNEL = "c" * 22
STREAM_EVENT = TypeAdapter(ResponseStreamEvent)
FACTS = ResponseFacts(CHANNEL, "demo", 1_800_000_000, None)
CHAT_FACTS = CompletionFacts(CHANNEL, "demo", 1_800_000_000)
USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def log(*middle: tuple[str, dict[str, Any]], end: tuple[str, dict[str, Any]] = ("done", {"finish_reason": "stop"})
        ) -> list[Event]:
    """A channel's log: meta, ``middle``, then ``end``."""
    kinds = [("meta", {"channel": CHANNEL, "conversation_id": "k", "model": "demo"}), *middle, end]
    return [Event.make(CHANNEL, index, kind, data) for index, (kind, data) in enumerate(kinds, start=1)]


def fresh(events: list[Event]) -> list[Event]:
    """The same log as new objects, as a read from the store gives them (no bytes kept on them)."""
    return [Event(e.channel, e.id, e.type, e.data_json) for e in events]


def sse_data(payload: bytes) -> list[dict[str, Any]]:
    """The JSON of every ``data:`` line, as an SSE client reads it (comments skipped)."""
    found = []
    for block in payload.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                found.append(orjson.loads(line[6:]))
    return found


def responses_events(events: list[Event], stream: ResponseStream | None = None) -> list[Any]:
    stream = stream or ResponseStream(FACTS)
    return [STREAM_EVENT.validate_python(data) for data in sse_data(stream.encode(events))]


ANSWER = log(("delta", {"content": "Hel"}), ("delta", {"content": "lo"}), ("usage", USAGE))


def test_sequence_numbers_start_at_zero_without_gaps_and_follow_the_documented_function() -> None:
    parsed = responses_events(ANSWER)
    assert [e.sequence_number for e in parsed] == list(range(len(parsed)))
    assert [e.type for e in parsed] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    deltas = [e for e in parsed if e.type == "response.output_text.delta"]
    assert [d.sequence_number for d in deltas] == [4, 5]  # the k-th delta is 4 + k
    assert parsed[-1].sequence_number == 7 + len(deltas)


def test_the_final_response_carries_the_whole_text_and_the_usage() -> None:
    final = responses_events(ANSWER)[-1].response
    assert isinstance(final, Response)
    Response.model_validate(final.model_dump())
    assert final.status == "completed" and final.output_text == "Hello"
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (3, 2)
    assert final.id == f"resp_{CHANNEL}"


@pytest.mark.parametrize("end, event_type, status", [
    (("done", {"finish_reason": "length"}), "response.incomplete", "incomplete"),
    (("error", {"code": "model_error", "message": "boom"}), "response.failed", "failed"),
    (("error", {"code": "rate_limited", "message": "slow down"}), "response.failed", "failed"),
    (("cancelled", {}), "response.incomplete", "cancelled"),
    (("interrupted", {"reason": "server_restart"}), "response.incomplete", "incomplete"),
])
def test_every_ending_is_one_final_event_with_the_right_status(end: tuple[str, dict[str, Any]], event_type: str,
                                                                status: str) -> None:
    parsed = responses_events(log(("delta", {"content": "part"}), end=end))
    assert parsed[-1].type == event_type and parsed[-1].response.status == status
    assert parsed[-1].response.output_text == "part"
    if end[0] == "error":
        assert parsed[-1].response.error.message == end[1]["message"]
    if end == ("done", {"finish_reason": "length"}):
        assert parsed[-1].response.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize("starting_after", range(-1, 12))
def test_a_resume_is_exactly_the_rest_of_a_full_replay(starting_after: int) -> None:
    whole = sse_data(ResponseStream(FACTS).encode(fresh(ANSWER)))
    stream = ResponseStream(FACTS, starting_after)
    events = fresh(ANSWER)
    skipped = 0
    while skipped < len(events) and not stream.wants(events[skipped]):
        stream.absorb(events[skipped])
        skipped += 1
    rest = sse_data(stream.encode(events[skipped:])) if skipped < len(events) else []
    assert rest == whole[starting_after + 1:]


def test_batches_give_the_same_bytes_as_one_write_and_a_lone_usage_writes_a_comment() -> None:
    whole = ResponseStream(FACTS).encode(fresh(ANSWER))
    stream = ResponseStream(FACTS)
    pieces = [stream.encode([event]) for event in fresh(ANSWER)]
    assert pieces[3] == openai_responses.NOTHING  # the usage event: an empty write would end the response
    assert b"".join(p for p in pieces if p != openai_responses.NOTHING) == whole


def test_frames_are_built_once_and_shared_but_a_requests_own_echo_is_not() -> None:
    events = fresh(ANSWER)
    echoing = ResponseStream(FACTS.echoing(Echo(background=False, temperature=0.5)))
    own = responses_events(events, echoing)
    assert own[0].response.background is False and own[0].response.temperature == 0.5
    shared = responses_events(events)  # the same event objects, read back by another reader
    assert shared[0].response.background is True and shared[0].response.temperature is None
    assert events[1].encoded is not None  # a delta's frame is kept for every reader
    again = ResponseStream(FACTS)
    assert again.encode(events) == ResponseStream(FACTS).encode(fresh(ANSWER))


def test_a_running_and_a_finished_response_read_back() -> None:
    queued = Response.model_validate(openai_responses.running_response(FACTS, None))
    assert queued.status == "queued" and queued.output == []
    running = Response.model_validate(openai_responses.running_response(FACTS, "so far"))
    assert running.status == "in_progress" and running.output_text == "so far"
    done = Response.model_validate(openai_responses.finished_response(FACTS, "done", {"finish_reason": "stop"},
                                                                      "all", USAGE))
    assert done == responses_events(fresh(log(("delta", {"content": "all"}), ("usage", USAGE))))[-1].response


def test_response_ids_name_channels() -> None:
    assert openai_responses.channel_of(openai_responses.response_id(CHANNEL)) == CHANNEL
    assert openai_responses.channel_of(CHANNEL) is None
    assert openai_responses.channel_of("resp_") is None


# ---- chat completions -----------------------------------------------------------------

def chat_chunks(payload: bytes) -> list[ChatCompletionChunk]:
    return [ChatCompletionChunk.model_validate(data) for data in sse_data(payload)]


def test_a_chunk_stream_is_role_content_finish_then_done() -> None:
    payload = ChunkStream(CHAT_FACTS, include_usage=False).encode(fresh(ANSWER))
    chunks = chat_chunks(payload)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello"
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].usage is None
    assert payload.endswith(b"data: [DONE]\n\n") and {c.id for c in chunks} == {f"chatcmpl-{CHANNEL}"}


def test_include_usage_puts_the_usage_chunk_last_after_the_finish_chunk() -> None:
    stream = ChunkStream(CHAT_FACTS, include_usage=True)
    pieces = [stream.encode([event]) for event in fresh(ANSWER)]
    assert pieces[3] == openai_chat.NOTHING  # held until the finish chunk
    chunks = chat_chunks(b"".join(pieces))
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 5


@pytest.mark.parametrize("end, code", [(("error", {"code": "model_error", "message": "boom"}), "model_error"),
                                       (("cancelled", {}), "cancelled"),
                                       (("interrupted", {"reason": "server_lost"}), "interrupted")])
def test_an_answer_that_fails_ends_the_chunk_stream_with_an_error_line(end: tuple[str, dict[str, Any]],
                                                                       code: str) -> None:
    payload = ChunkStream(CHAT_FACTS, include_usage=True).encode(fresh(log(("delta", {"content": "x"}), end=end)))
    error = sse_data(payload)[-1]["error"]
    assert error["code"] == code and error["message"] and payload.endswith(b"data: [DONE]\n\n")


def test_the_completion_object_is_openais() -> None:
    body = openai_chat.completion(CHAT_FACTS, "Hello", {"finish_reason": "something_else"}, USAGE)
    completion = ChatCompletion.model_validate(body)
    assert completion.choices[0].message.content == "Hello"
    assert completion.choices[0].finish_reason == "stop"  # unknown to OpenAI's types: read as stop
    assert completion.usage is not None and completion.usage.prompt_tokens == 3
