"""/v1 against a real model endpoint (the loopback OpenAI upstream): what reaches the model, and its failures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from tests.e2e.test_models import MODEL, model_env
from tests.openai.conftest import new_token, sdk
from tests.support.openai_upstream import OpenAIUpstream, Reply
from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAIUpstream]:
    with OpenAIUpstream(models=[MODEL]) as server:
        yield server


@pytest.fixture(scope="module")
def chime(upstream: OpenAIUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = model_env(upstream, CHIME_NEW_USERS_PER_MINUTE="1000", CHIME_SUBMISSIONS_PER_MINUTE="1000")
    with ServerProcess(Path(tmp_path_factory.mktemp("chime-v1-models")), env) as process:
        yield process


@pytest.fixture
def client(chime: ServerProcess) -> Iterator[openai.OpenAI]:
    with sdk(chime, new_token(chime)) as sync_client:
        yield sync_client


def test_the_messages_are_the_whole_context_and_the_options_reach_the_model(
        client: openai.OpenAI, upstream: OpenAIUpstream) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "Answer in French."}, {"role": "user", "content": "ctx-1 hello"},
        {"role": "assistant", "content": "bonjour"}, {"role": "user", "content": "ctx-1 again"}]
    completion = client.chat.completions.create(model=MODEL, messages=messages, temperature=0.7, max_tokens=42)
    assert completion.choices[0].message.content == "Echo: ctx-1 again"
    sent = upstream.requests_for("ctx-1 again")[-1].body
    assert sent["messages"] == messages  # no stored history, no system prompt of the server's
    assert (sent["temperature"], sent["max_tokens"]) == (0.7, 42)


def test_instructions_and_previous_response_id_make_the_context(client: openai.OpenAI,
                                                                upstream: OpenAIUpstream) -> None:
    first = client.responses.create(model=MODEL, input="ctx-2 first", instructions="Be brief.")
    assert first.output_text == "Echo: ctx-2 first"
    second = client.responses.create(model=MODEL, input="ctx-2 second", previous_response_id=first.id,
                                     max_output_tokens=9)
    assert upstream.requests_for("ctx-2 first")[-1].body["messages"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "ctx-2 first"}]
    sent = upstream.requests_for("ctx-2 second")[-1].body
    assert sent["messages"] == [{"role": "user", "content": "ctx-2 first"},
                                {"role": "assistant", "content": "Echo: ctx-2 first"},
                                {"role": "user", "content": "ctx-2 second"}]
    assert sent["max_tokens"] == 9 and second.previous_response_id == first.id


def test_a_rate_limited_model_is_the_sdks_rate_limit_error(client: openai.OpenAI, upstream: OpenAIUpstream) -> None:
    upstream.when("fail-429", Reply.error(429, retry_after="0"))
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "fail-429"}])
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers["x-chime-channel"]


def test_a_failing_model_is_the_sdks_server_error(client: openai.OpenAI, upstream: OpenAIUpstream) -> None:
    upstream.when("fail-500", Reply.error(500))
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "fail-500"}])
    assert caught.value.status_code == 502 and caught.value.code == "model_error"
    with pytest.raises(openai.InternalServerError):
        client.responses.create(model=MODEL, input="fail-500 again")


def test_a_model_that_fails_mid_stream(client: openai.OpenAI, upstream: OpenAIUpstream, chime: ServerProcess) -> None:
    upstream.when("fail-midway", Reply.text("one two three four", error_after=2))
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "fail-midway"}],
                                            stream=True)
    received: list[ChatCompletionChunk] = []
    with pytest.raises(openai.APIError) as caught:
        received.extend(stream)  # keeps the chunks that came before the error
    assert "".join(c.choices[0].delta.content or "" for c in received) == "one two "
    assert caught.value.code == "model_error"

    events = list(client.responses.create(model=MODEL, input="fail-midway too", stream=True))
    assert events[-1].type == "response.failed"
    failed = events[-1].response
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "server_error"
    assert failed.output_text == "one two "
    assert [e.sequence_number for e in events] == list(range(len(events)))
    again = client.responses.retrieve(failed.id)
    assert again.status == "failed" and again.error == failed.error
    # The failure is the channel's too, on the native API.
    native = httpx.get(f"{chime.url}/api/channels/{failed.id.removeprefix('resp_')}",
                       headers={"Authorization": f"Bearer {client.api_key}"}).json()
    assert native["status"] == "error"
