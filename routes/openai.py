"""The OpenAI-compatible API (API.md, "/v1"): OpenAI's clients use Chime as their server.

The API key is a Chime token. Every answer made here is an ordinary channel of
that user, started through the one answers service and read through the one
reader; ``routes/encoders/openai_chat.py`` and ``openai_responses.py`` are
how it is written. A client that leaves a stream does not stop its answer:
the answer runs on, stored, and can be read again (``GET /v1/responses/{id}``,
or any native endpoint).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sanic import Blueprint
from sanic.response import HTTPResponse, json

from channels.answers import UnknownAnswer
from channels.events import DONE, ERROR, Event
from channels.store import ChannelRecord, Store
from errors import ApiError, InvalidField, ModelNotFound, NotFound, Unavailable
from llm.base import ModelOptions
from llm.context import build_messages
from routes.auth import require_user
from routes.encoders import openai_chat, openai_responses
from routes.encoders.openai_chat import ChunkStream, CompletionFacts
from routes.encoders.openai_responses import Echo, ResponseFacts, ResponseStream
from routes.params import json_object, non_negative_int, query_value
from routes.streams import owned_channel, stream_http, subscribe
from services import ChimeRequest
from settings import Settings

bp = Blueprint("openai", url_prefix="/v1")

CHANNEL_HEADER = "x-chime-channel"
OWNER = "chime"
# When this server started offering its models: what ``created`` says of them.
MODELS_CREATED = int(time.time())
MAX_TEMPERATURE = 2.0
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
REPLAY_PAGE_EVENTS = 2_000

# How an answer that did not end with ``done`` reaches a client that waited for it whole:
# an HTTP status OpenAI's SDKs raise as their typed errors (429 RateLimitError, 5xx InternalServerError...).
_FAILURE_STATUS = {"rate_limited": 429, "model_stalled": 504, "answer_timeout": 504, "internal_error": 500,
                   "cancelled": 409, "interrupted": 503}
_FAILURE_DEFAULT_STATUS = 502  # the model failed: a bad gateway, from the client's side
_RETRY_AFTER_S = 1


class AnswerFailed(ApiError):
    """The answer a request waited for ended without ``done``; its channel is named in the header."""

    def __init__(self, channel: str, code: str, message: str):
        self.status_code = _FAILURE_STATUS.get(code, _FAILURE_DEFAULT_STATUS)
        self.code = code
        headers = {CHANNEL_HEADER: channel}
        if self.status_code in (429, 503):
            headers["Retry-After"] = str(_RETRY_AFTER_S)
        super().__init__(message, headers=headers)


# ---- models -------------------------------------------------------------------------

def offered_models(settings: Settings) -> list[str]:
    """The models this server answers with, the configured one first."""
    return [settings.model_name]


def model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": MODELS_CREATED, "owned_by": OWNER}


@bp.get("/models")
async def list_models(request: ChimeRequest) -> HTTPResponse:
    await require_user(request)
    return json({"object": "list", "data": [model_object(name) for name in offered_models(request.app.ctx.settings)]})


@bp.get("/models/<model:path>")
async def get_model(request: ChimeRequest, model: str) -> HTTPResponse:
    await require_user(request)
    if model not in offered_models(request.app.ctx.settings):
        raise ModelNotFound(f"The model {model!r} does not exist here; GET /v1/models lists those that do.")
    return json(model_object(model))


def chosen_model(body: dict[str, Any], settings: Settings) -> str:
    model = body.get("model")
    if model is None:
        return settings.model_name
    if not isinstance(model, str):
        raise InvalidField("model", "model must be a string.")
    if model not in offered_models(settings):
        error = ModelNotFound(f"The model {model!r} does not exist here; GET /v1/models lists those that do.")
        error.param = "model"
        raise error
    return model


# ---- request fields ------------------------------------------------------------------

def optional_bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidField(name, f"{name} must be true or false.")
    return value


def temperature_of(body: dict[str, Any]) -> float | None:
    value = body.get("temperature")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_TEMPERATURE:
        raise InvalidField("temperature", f"temperature must be a number from 0 to {MAX_TEMPERATURE:g}.")
    return float(value)


def token_limit(body: dict[str, Any], *names: str) -> int | None:
    """The first of ``names`` that is given, a positive integer."""
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidField(name, f"{name} must be a positive integer.")
        return value
    return None


def content_text(content: object, param: str) -> str:
    """A message's content: a string, or a list of text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if not isinstance(kind, str) or kind not in TEXT_PARTS or not isinstance(part.get("text"), str):
                raise InvalidField(param, "Only text content is supported: parts of type "
                                          "'text', 'input_text' or 'output_text' with a string 'text'.")
            texts.append(part["text"])
        return "".join(texts)
    raise InvalidField(param, "content must be a string or a list of text parts.")


def chat_messages(raw: object, param: str) -> list[dict[str, str]]:
    """Messages as the model is sent them; ``developer`` reads as ``system``."""
    if not isinstance(raw, list) or not raw:
        raise InvalidField(param, f"{param} must be a non-empty list of messages.")
    messages = []
    for index, item in enumerate(raw):
        where = f"{param}[{index}]"
        if not isinstance(item, dict):
            raise InvalidField(where, f"{where} must be an object with 'role' and 'content'.")
        if item.get("type", "message") != "message":
            raise InvalidField(where, f"{where}: only messages are supported, not {item.get('type')!r} items.")
        raw_role = item.get("role")
        role = ROLES.get(raw_role) if isinstance(raw_role, str) else None
        if role is None:
            raise InvalidField(where, f"{where}.role must be one of {', '.join(sorted(ROLES))}.")
        content = item.get("content")
        if content is None and role == "assistant":
            content = ""
        messages.append({"role": role, "content": content_text(content, f"{where}.content")})
    return messages


def last_user_text(messages: list[dict[str, str]], param: str) -> str:
    """The turn stored for the answer: the last user message, which must say something."""
    turn = next((m["content"] for m in reversed(messages) if m["role"] == "user"), None)
    if turn is None or not turn.strip():
        raise InvalidField(param, f"{param} must include a user message with text.")
    return turn


# ---- starting and waiting -------------------------------------------------------------------

async def start(request: ChimeRequest, user_id: str, turn: str, context: list[dict[str, str]],
                options: ModelOptions, conversation_id: str | None = None) -> ChannelRecord:
    """Start the answer (the answers service, as every front door) and return its channel's record."""
    ctx = request.app.ctx
    if ctx.stopping:
        raise Unavailable()
    submitted = await ctx.answers.submit(user_id, turn, conversation_id, request.client_ip,
                                         context=context, options=options)
    ctx.metrics.inc("chime_submissions_total", help="Questions submitted.")
    return await owned_channel(request, submitted.channel, user_id)


async def ending_of(request: ChimeRequest, record: ChannelRecord) -> Event:
    """The channel's terminal event, waiting for it while the answer runs."""
    async with subscribe(request, record.id, max(0, record.last_event_id - 1), "openai", None) as subscription:
        async for batch in subscription.batches:
            if batch and batch[-1].terminal:
                return batch[-1]
    if request.app.ctx.hub.shutting_down:
        raise Unavailable()
    raise NotFound("The answer was deleted before it ended.")


def epoch_seconds(timestamp: str) -> int:
    return int(datetime.fromisoformat(timestamp).timestamp())


def channel_headers(channel: str, base: dict[str, str] | None = None) -> dict[str, str]:
    return {**(base or {}), CHANNEL_HEADER: channel}


# ---- chat completions ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ChatRequest:
    messages: list[dict[str, str]]
    turn: str
    stream: bool
    include_usage: bool
    options: ModelOptions


def chat_request(body: dict[str, Any], settings: Settings) -> ChatRequest:
    messages = chat_messages(body.get("messages"), "messages")
    turn = last_user_text(messages, "messages")
    chosen_model(body, settings)
    n = body.get("n")
    if n is not None and n != 1:
        raise InvalidField("n", "Only n = 1 is supported: one answer per request.")
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise InvalidField("stream_options", "stream_options must be an object.")
    include_usage = optional_bool(stream_options or {}, "include_usage")
    options = ModelOptions(temperature=temperature_of(body),
                           max_tokens=token_limit(body, "max_completion_tokens", "max_tokens"))
    return ChatRequest(messages, turn, optional_bool(body, "stream"), include_usage, options)


@bp.post("/chat/completions")
async def chat_completions(request: ChimeRequest) -> HTTPResponse | None:
    ctx = request.app.ctx
    user_id = await require_user(request)
    asked = chat_request(json_object(request), ctx.settings)
    record = await start(request, user_id, asked.turn, asked.messages, asked.options)
    facts = CompletionFacts(record.id, record.model, epoch_seconds(record.created_at))
    if asked.stream:
        encoder = ChunkStream(facts, asked.include_usage).encoder()
        await stream_http(request, record.id, 0, encoder, content_type=openai_chat.CONTENT_TYPE,
                          headers=channel_headers(record.id, openai_chat.HEADERS))
        return None
    terminal = await ending_of(request, record)
    if terminal.type != DONE:
        raise AnswerFailed(record.id, *openai_chat.failure(terminal.type, terminal.data))
    text = await ctx.store.channel_content(record.id)
    usage = (await ctx.store.get_channel(record.id) or record).usage
    return json(openai_chat.completion(facts, text, terminal.data, usage), headers=channel_headers(record.id))


# ---- responses ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    input: list[dict[str, str]]
    turn: str
    previous_response_id: str | None
    stream: bool
    echo: Echo
    options: ModelOptions


def responses_request(body: dict[str, Any], settings: Settings) -> ResponsesRequest:
    raw = body.get("input")
    if isinstance(raw, str):
        if not raw.strip():
            raise InvalidField("input", "input must not be empty.")
        messages = [{"role": "user", "content": raw}]
    else:
        messages = chat_messages(raw, "input")
    turn = last_user_text(messages, "input")
    chosen_model(body, settings)
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidField("instructions", "instructions must be a string.")
    previous = body.get("previous_response_id")
    if previous is not None and not isinstance(previous, str):
        raise InvalidField("previous_response_id", "previous_response_id must be a string.")
    temperature = temperature_of(body)
    max_output_tokens = token_limit(body, "max_output_tokens")
    echo = Echo(background=optional_bool(body, "background"), instructions=instructions,
                temperature=temperature, max_output_tokens=max_output_tokens)
    return ResponsesRequest(messages, turn, previous, optional_bool(body, "stream"), echo,
                            ModelOptions(temperature=temperature, max_tokens=max_output_tokens))


async def owned_response(request: ChimeRequest, response_id: str, user_id: str, param: str | None = None
                         ) -> ChannelRecord:
    channel = openai_responses.channel_of(response_id)
    try:
        if channel is None:
            raise UnknownAnswer(response_id)
        return await owned_channel(request, channel, user_id)
    except UnknownAnswer:
        error = NotFound(f"No response with id {response_id!r}.")
        error.param = param
        raise error from None


async def previous_response_id(store: Store, record: ChannelRecord) -> str | None:
    """The answer before this one in its conversation: the earlier turns its model was sent."""
    previous = None
    for message in await store.messages(record.conversation_id):
        if message.channel == record.id:
            return previous
        if message.role == "assistant" and message.channel:
            previous = openai_responses.response_id(message.channel)
    return None


async def response_facts(request: ChimeRequest, record: ChannelRecord, echo: Echo = openai_responses.READ_BACK
                         ) -> ResponseFacts:
    previous = await previous_response_id(request.app.ctx.store, record)
    return ResponseFacts(record.id, record.model, epoch_seconds(record.created_at), previous, echo)


async def context_for(request: ChimeRequest, asked: ResponsesRequest, conversation_id: str | None
                      ) -> list[dict[str, str]]:
    """``instructions`` as the system message, the continued conversation's turns, then ``input``."""
    ctx = request.app.ctx
    system = [{"role": "system", "content": asked.echo.instructions}] if asked.echo.instructions else []
    if conversation_id is None:
        return system + asked.input
    history = await ctx.store.messages(conversation_id)
    # The same bound on earlier turns as every conversation has; its last message is the turn itself.
    earlier = build_messages("", history, asked.turn, ctx.settings.history_budget_chars)[:-1]
    return system + earlier + asked.input


@bp.post("/responses")
async def create_response(request: ChimeRequest) -> HTTPResponse | None:
    ctx = request.app.ctx
    user_id = await require_user(request)
    asked = responses_request(json_object(request), ctx.settings)
    conversation_id = None
    if asked.previous_response_id is not None:
        previous = await owned_response(request, asked.previous_response_id, user_id, "previous_response_id")
        conversation_id = previous.conversation_id
    context = await context_for(request, asked, conversation_id)
    record = await start(request, user_id, asked.turn, context, asked.options, conversation_id)
    facts = await response_facts(request, record, asked.echo)
    if asked.stream:
        await stream_response(request, record, ResponseStream(facts))
        return None
    if not asked.echo.background:
        terminal = await ending_of(request, record)
        if terminal.type == ERROR:
            raise AnswerFailed(record.id, *openai_chat.failure(terminal.type, terminal.data))
        record = await ctx.store.get_channel(record.id) or record
    return json(await current_response(request, record, facts), headers=channel_headers(record.id))


async def current_response(request: ChimeRequest, record: ChannelRecord, facts: ResponseFacts) -> dict[str, Any]:
    """The Response as the channel is now (its record, read just before)."""
    store = request.app.ctx.store
    text = await store.channel_content(record.id)
    if record.running:
        return openai_responses.running_response(facts, text if record.last_event_id > 1 else None, record.usage)
    terminal = (await store.read_after(record.id, record.last_event_id - 1, 1))[0]
    return openai_responses.finished_response(facts, terminal.type, terminal.data, text, record.usage)


@bp.get("/responses/<response_id:str>")
async def get_response(request: ChimeRequest, response_id: str) -> HTTPResponse | None:
    user_id = await require_user(request)
    stream = stream_flag(query_value(request, "stream"))
    starting_after = non_negative_int(query_value(request, "starting_after"), "starting_after")
    record = await owned_response(request, response_id, user_id)
    facts = await response_facts(request, record)
    if stream:
        await stream_response(request, record, ResponseStream(facts, -1 if starting_after is None
                                                              else starting_after))
        return None
    return json(await current_response(request, record, facts), headers=channel_headers(record.id))


def stream_flag(raw: str | None) -> bool:
    if raw is None or raw.lower() in ("false", "0"):
        return False
    if raw.lower() in ("true", "1"):
        return True
    raise InvalidField("stream", "stream must be true or false.")


async def stream_response(request: ChimeRequest, record: ChannelRecord, stream: ResponseStream) -> None:
    """The Responses event stream of the channel, from after ``stream.skip_through``, live to its end."""
    after = await skip_to_start(request.app.ctx.store, record.id, stream)
    headers = channel_headers(record.id, openai_responses.HEADERS)
    if stream.finished:  # a resume at or past the last event: nothing is left to send
        response = await request.respond(content_type=openai_responses.CONTENT_TYPE, headers=headers)
        await response.eof()
        return
    await stream_http(request, record.id, after, stream.encoder(), content_type=openai_responses.CONTENT_TYPE,
                      headers=headers)


async def skip_to_start(store: Store, channel: str, stream: ResponseStream) -> int:
    """Absorb the stored events that come wholly at or before the resume point; the id to read after.

    The numbering depends on every event before (a ``usage`` has no number), so
    a resume counts from the start of the log.
    """
    after = 0
    while True:
        batch = await store.read_after(channel, after, REPLAY_PAGE_EVENTS)
        for event in batch:
            if stream.wants(event):
                return after
            stream.absorb(event)
            after = event.id
        if len(batch) < REPLAY_PAGE_EVENTS:
            return after


@bp.post("/responses/<response_id:str>/cancel")
async def cancel_response(request: ChimeRequest, response_id: str) -> HTTPResponse:
    ctx = request.app.ctx
    user_id = await require_user(request)
    record = await owned_response(request, response_id, user_id)
    if record.running:
        await ctx.answers.cancel(record.id, wait=True)
        record = await ctx.store.get_channel(record.id) or record
    facts = await response_facts(request, record)
    return json(await current_response(request, record, facts), headers=channel_headers(record.id))

