"""OpenAI's own SDK, sync and async, against the real server process: /v1 as its clients use it."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from openai.types.responses import Response, ResponseStreamEvent

from llm.demo import demo_reply, demo_tokens
from tests.openai.conftest import Native, new_token, sdk
from tests.support.server import ServerProcess
from tests.support.waiting import wait_until

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is a channel?"}]
TERMINAL_TYPES = {"response.completed", "response.failed", "response.incomplete"}


def sequence_numbers(events: list[ResponseStreamEvent]) -> list[int]:
    return [event.sequence_number for event in events]


def dumped(events: list[ResponseStreamEvent]) -> list[dict[str, Any]]:
    return [event.model_dump() for event in events]


def channel_of_response(response_id: str) -> str:
    assert response_id.startswith("resp_")
    return response_id[len("resp_"):]


# ---- models -------------------------------------------------------------------------

def test_models_list_the_configured_model(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == ["demo"] and models[0].object == "model"
    assert client.models.retrieve("demo").id == "demo"


async def test_models_list_async(async_client: openai.AsyncOpenAI) -> None:
    page = await async_client.models.list()
    assert [m.id for m in page.data] == ["demo"]


# ---- chat completions -----------------------------------------------------------------

def test_a_chat_completion_is_an_ordinary_channel_of_the_user(client: openai.OpenAI, native: Native) -> None:
    raw = client.chat.completions.with_raw_response.create(model="demo", messages=USER)
    completion = raw.parse()
    channel = raw.headers["x-chime-channel"]
    answer = demo_reply("What is a channel?")
    assert completion.choices[0].message.content == answer and completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == len(demo_tokens("What is a channel?"))
    record = native.channel(channel)
    assert record["status"] == "done" and record["content"] == answer
    assert [c["id"] for c in native.conversations()] == [record["conversation_id"]]
    turn = native.conversation(record["conversation_id"])["messages"]
    assert [(m["role"], m["content"]) for m in turn] == [("user", "What is a channel?"), ("assistant", answer)]
    events = native.sse_events(channel)
    assert events[0][0] == "meta" and events[-1] == ("done", {"finish_reason": "stop"})
    assert "".join(data["content"] for kind, data in events if kind == "delta") == answer


def test_the_token_limit_and_model_name_are_honoured(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="demo", messages=USER, max_completion_tokens=5)
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "".join(demo_tokens("What is a channel?")[:5])
    assert completion.model == "demo"


async def test_a_chat_stream_ends_with_done_and_usage_when_asked(async_client: openai.AsyncOpenAI) -> None:
    stream = await async_client.chat.completions.create(model="demo", messages=USER, stream=True,
                                                        stream_options={"include_usage": True})
    assert stream.response.headers["x-chime-channel"]
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == demo_reply("What is a channel?")
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_a_chat_stream_without_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="demo", messages=USER, stream=True))
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_client_that_leaves_a_chat_stream_does_not_stop_the_answer(client: openai.OpenAI,
                                                                      native: Native) -> None:
    stream = client.chat.completions.create(model="demo", messages=USER, stream=True)
    channel = stream.response.headers["x-chime-channel"]
    for _, _chunk in zip(range(3), stream, strict=False):
        pass
    stream.close()
    def ended() -> dict[str, Any] | None:
        record = native.channel(channel)
        return record if record["status"] != "running" else None

    record = wait_until(ended, 20, "the answer to end")
    assert record is not None
    assert record["status"] == "done" and record["content"] == demo_reply("What is a channel?")


# ---- responses: background, drop, resume ------------------------------------------------

def test_a_background_stream_read_partway_resumes_with_exactly_the_rest(client: openai.OpenAI,
                                                                         native: Native) -> None:
    stream = client.responses.create(model="demo", input="Tell me about resuming.", background=True, stream=True)
    channel = stream.response.headers["x-chime-channel"]
    seen = [event for _, event in zip(range(8), stream, strict=False)]
    stream.close()  # the connection dropped
    assert native.channel(channel)["status"] == "running"  # the answer runs on without its reader
    assert seen[0].type == "response.created"
    response_id = seen[0].response.id
    assert channel_of_response(response_id) == channel
    rest = list(client.responses.retrieve(response_id, stream=True, starting_after=seen[-1].sequence_number))
    assert sequence_numbers(seen + rest) == list(range(len(seen) + len(rest)))
    assert rest[-1].type == "response.completed"
    assert rest[-1].response.output_text == demo_reply("Tell me about resuming.")
    replay = list(client.responses.retrieve(response_id, stream=True))
    assert dumped(replay) == dumped(seen + rest)  # the same events, the same numbers, on every read


async def test_a_background_stream_resumes_async(async_client: openai.AsyncOpenAI) -> None:
    stream = await async_client.responses.create(model="demo", input="async resume", background=True, stream=True)
    seen = []
    async for event in stream:
        seen.append(event)
        if len(seen) == 6:
            break
    await stream.close()
    response_id = seen[0].response.id  # type: ignore[union-attr]
    resumed = await async_client.responses.retrieve(response_id, stream=True, starting_after=5)
    rest = [event async for event in resumed]
    assert sequence_numbers(seen + rest) == list(range(len(seen) + len(rest)))
    assert rest[-1].type == "response.completed"


def test_a_background_response_returns_at_once_and_can_be_polled(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(model="demo", input="poll me", background=True)
    created = raw.parse()
    assert raw.headers["x-chime-channel"] == channel_of_response(created.id)
    assert created.background is True and created.status in ("queued", "in_progress")
    def completed() -> Response | None:
        now = client.responses.retrieve(created.id)
        return now if now.status == "completed" else None

    done = wait_until(completed, 20, "the response to complete")
    assert done is not None
    assert done.output_text == demo_reply("poll me") and done.usage is not None
    assert done.error is None and done.incomplete_details is None and done.previous_response_id is None


def test_responses_stream_by_id_replays_from_the_start(client: openai.OpenAI) -> None:
    created = client.responses.create(model="demo", input="stream by id", background=True)
    with client.responses.stream(response_id=created.id) as stream:
        final = stream.get_final_response()
    assert final.output_text == demo_reply("stream by id")
    with client.responses.stream(response_id=created.id, starting_after=10) as stream:
        later = list(stream)
    assert later[0].sequence_number == 11 and later[-1].type == "response.completed"


async def test_responses_stream_by_id_async(async_client: openai.AsyncOpenAI) -> None:
    created = await async_client.responses.create(model="demo", input="async stream by id", background=True)
    async with async_client.responses.stream(response_id=created.id) as stream:
        final = await stream.get_final_response()
    assert final.output_text == demo_reply("async stream by id")


def test_a_non_background_response_waits_for_the_answer(client: openai.OpenAI) -> None:
    response = client.responses.create(model="demo", input="wait for me", max_output_tokens=4, temperature=0.5)
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "".join(demo_tokens("wait for me")[:4])
    assert response.background is False and response.temperature == 0.5 and response.max_output_tokens == 4


def test_a_resume_past_the_end_is_an_empty_stream(client: openai.OpenAI) -> None:
    response = client.responses.create(model="demo", input="short", max_output_tokens=2)
    assert list(client.responses.retrieve(response.id, stream=True, starting_after=1000)) == []


# ---- cancel --------------------------------------------------------------------------------

def test_cancel_is_idempotent_and_the_stream_ends_cancelled(client: openai.OpenAI, native: Native) -> None:
    created = client.responses.create(model="demo", input="cancel me " * 20, background=True)
    cancelled = client.responses.cancel(created.id)
    assert cancelled.status == "cancelled"
    assert client.responses.cancel(created.id).model_dump() == cancelled.model_dump()
    assert client.responses.retrieve(created.id).status == "cancelled"
    events = list(client.responses.retrieve(created.id, stream=True))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.status == "cancelled"
    assert native.channel(channel_of_response(created.id))["status"] == "cancelled"


async def test_a_finished_response_is_returned_as_it_is_by_cancel(async_client: openai.AsyncOpenAI) -> None:
    done = await async_client.responses.create(model="demo", input="already done")
    assert (await async_client.responses.cancel(done.id)).status == "completed"


# ---- conversations -----------------------------------------------------------------------

def test_previous_response_id_continues_its_conversation(client: openai.OpenAI, native: Native) -> None:
    first = client.responses.create(model="demo", input="first question")
    second = client.responses.create(model="demo", input="second question", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    assert client.responses.retrieve(second.id).previous_response_id == first.id
    one, two = (native.channel(channel_of_response(r.id)) for r in (first, second))
    assert one["conversation_id"] == two["conversation_id"]
    messages = native.conversation(one["conversation_id"])["messages"]
    assert [m["content"] for m in messages] == ["first question", first.output_text, "second question",
                                                second.output_text]
    assert [c["id"] for c in native.conversations()] == [one["conversation_id"]]


# ---- identity -----------------------------------------------------------------------------

def test_no_or_an_unknown_key_is_401_in_openais_shape(chime: ServerProcess) -> None:
    with sdk(chime, "not-a-chime-token") as stranger, pytest.raises(openai.AuthenticationError) as caught:
        stranger.models.list()
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    bare = httpx.get(f"{chime.url}/v1/models")
    assert bare.status_code == 401 and set(bare.json()["error"]) == {"message", "type", "param", "code"}


def test_another_users_response_is_404(client: openai.OpenAI, chime: ServerProcess) -> None:
    mine = client.responses.create(model="demo", input="mine", background=True)
    with sdk(chime, new_token(chime)) as other:
        for attempt in (lambda: other.responses.retrieve(mine.id), lambda: other.responses.cancel(mine.id),
                        lambda: list(other.responses.retrieve(mine.id, stream=True)),
                        lambda: other.responses.create(model="demo", input="x", previous_response_id=mine.id)):
            with pytest.raises(openai.NotFoundError):
                attempt()
    assert client.responses.retrieve(mine.id).id == mine.id


# ---- bad input ----------------------------------------------------------------------------

BAD_CHAT_BODIES = [
    ({"model": "demo"}, 400, "messages"),
    ({"model": "demo", "messages": []}, 400, "messages"),
    ({"model": "demo", "messages": "hello"}, 400, "messages"),
    ({"model": "demo", "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0]"),
    ({"model": "demo", "messages": [{"role": "user", "content": 7}]}, 400, "messages[0].content"),
    ({"model": "demo", "messages": [{"role": "assistant", "content": "only me"}]}, 400, "messages"),
    ({"model": "demo", "messages": USER, "temperature": "hot"}, 400, "temperature"),
    ({"model": "demo", "messages": USER, "temperature": 3}, 400, "temperature"),
    ({"model": "demo", "messages": USER, "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "demo", "messages": USER, "stream": "yes"}, 400, "stream"),
    ({"model": "demo", "messages": USER, "stream_options": []}, 400, "stream_options"),
    ({"model": "demo", "messages": USER, "n": 2}, 400, "n"),
    ({"model": 5, "messages": USER}, 400, "model"),
    ({"model": "gpt-nonexistent", "messages": USER}, 404, "model"),
]
BAD_RESPONSE_BODIES = [
    ({"model": "demo"}, 400, "input"),
    ({"model": "demo", "input": ""}, 400, "input"),
    ({"model": "demo", "input": [{"type": "function_call", "name": "f"}]}, 400, "input[0]"),
    ({"model": "demo", "input": "hi", "instructions": 3}, 400, "instructions"),
    ({"model": "demo", "input": "hi", "background": "soon"}, 400, "background"),
    ({"model": "demo", "input": "hi", "max_output_tokens": 1.5}, 400, "max_output_tokens"),
    ({"model": "demo", "input": "hi", "previous_response_id": 12}, 400, "previous_response_id"),
    ({"model": "demo", "input": "hi", "previous_response_id": "resp_nothing"}, 404, "previous_response_id"),
    ({"model": "nope", "input": "hi"}, 404, "model"),
]


@pytest.mark.parametrize("path, body, status, param",
                         [("/v1/chat/completions", *case) for case in BAD_CHAT_BODIES]
                         + [("/v1/responses", *case) for case in BAD_RESPONSE_BODIES])
def test_bad_input_is_an_openai_shaped_4xx_that_changes_nothing(chime: ServerProcess, token: str, native: Native,
                                                               path: str, body: dict[str, Any], status: int,
                                                               param: str) -> None:
    response = native.http.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param and error["message"]
    assert error["type"] == "invalid_request_error"
    if status == 404 and param == "model":
        assert error["code"] == "model_not_found"
    assert native.conversations() == []


def test_the_sdk_raises_its_typed_errors_for_bad_input(client: openai.OpenAI, native: Native) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-nonexistent", messages=USER)
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="demo", messages=[])
    with pytest.raises(openai.BadRequestError):
        client.responses.retrieve("resp_x", stream=True, starting_after=-1)
    assert native.conversations() == []


def test_bad_json_and_bad_query_values(native: Native) -> None:
    assert native.http.post("/v1/chat/completions", content=b"{not json").status_code == 400
    assert native.http.post("/v1/responses", content=b"[]").json()["error"]["code"] == "invalid_json"
    assert native.http.get("/v1/responses/resp_x?stream=maybe").status_code == 400
    assert native.http.get("/v1/responses/resp_x?stream=true&starting_after=abc").status_code == 400
    missing = native.http.get("/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    assert native.conversations() == []


async def test_many_background_responses_all_finish(async_client: openai.AsyncOpenAI) -> None:
    created = [await async_client.responses.create(model="demo", input=f"q{n}", background=True)
               for n in range(3)]
    for response in created:
        async with async_client.responses.stream(response_id=response.id) as stream:
            final = await stream.get_final_response()
        assert final.status == "completed" and final.output_text == demo_reply(f"q{created.index(response)}")
