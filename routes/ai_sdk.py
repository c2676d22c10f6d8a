"""The Vercel AI SDK's chat protocol (API.md, "/api/ai"): ``useChat`` with Chime as its backend.

A chat id is the client's name for one of its user's conversations: the
conversation's id is derived from the user and the chat id
(``conversation_id``), so two users' chats never meet and the chat's answers
are ordinary channels of that conversation, readable on every native endpoint.
The wire is ``routes/encoders/ai_sdk.py`` over the one reader.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from sanic import Blueprint
from sanic.response import HTTPResponse, empty, json

from channels.answers import ConversationFor
from channels.store import ChannelRecord, MessageRecord
from errors import InvalidMessage, InvalidParameter, Unavailable
from routes.auth import user_for
from routes.chat import checked_message
from routes.encoders import ai_sdk as wire
from routes.params import MAX_EVENT_ID, json_object, non_negative_int, query_value
from routes.streams import stream_http
from services import ChimeRequest

bp = Blueprint("ai_sdk")

SUBMIT = "submit-message"
REGENERATE = "regenerate-message"
MAX_CHAT_ID_CHARS = 256
# Domain separation: the same user and text under another derivation give another id.
CHAT_KEY_CONTEXT = b"chime /api/ai chat\x00"
CONVERSATION_ID_BYTES = 18  # 144 bits, 24 URL-safe characters


def conversation_id(user_id: str, chat_id: str) -> str:
    """The user's conversation that the client calls ``chat_id``.

    Keyed by the user id, which no other user is ever shown: the same chat id
    from two users names two conversations, and nobody can name another's.
    """
    digest = hmac.new(user_id.encode(), CHAT_KEY_CONTEXT + chat_id.encode("utf-8", "surrogatepass"),
                      hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:CONVERSATION_ID_BYTES]).decode()


def conversation_for(chat_id: str) -> ConversationFor:
    return lambda user_id: conversation_id(user_id, chat_id)


# ---- POST /api/ai/chat: a question, answered as a UI message stream ----------------

@dataclass(frozen=True, slots=True)
class ChatTurn:
    chat_id: str
    question: str
    again: bool  # regenerate: the last question answered anew


def chat_turn(body: dict[str, Any]) -> ChatTurn:
    """The transport's body ``{id, messages, trigger, messageId?}``, checked (400 otherwise)."""
    chat_id = body.get("id")
    if not isinstance(chat_id, str) or not 1 <= len(chat_id) <= MAX_CHAT_ID_CHARS:
        raise InvalidParameter(f"id must be the chat's id, a string of 1 to {MAX_CHAT_ID_CHARS} characters.")
    trigger = body.get("trigger", SUBMIT)
    if trigger not in (SUBMIT, REGENERATE):
        raise InvalidParameter(f'trigger must be "{SUBMIT}" or "{REGENERATE}".')
    message_id = body.get("messageId")
    if message_id is not None and not isinstance(message_id, str):
        raise InvalidParameter("messageId must be a string.")
    return ChatTurn(chat_id, checked_message(last_user_text(body.get("messages"))), trigger == REGENERATE)


def last_user_text(messages: object) -> str:
    """The text of the last user message of ``messages`` (UI messages): its text parts, joined."""
    if not isinstance(messages, list) or not messages:
        raise InvalidMessage("messages must be a non-empty array of UI messages.")
    if not all(isinstance(message, dict) for message in messages):
        raise InvalidMessage("Every entry of messages must be an object {id, role, parts}.")
    last = next((message for message in reversed(messages) if message.get("role") == "user"), None)
    if last is None:
        raise InvalidMessage("messages has no user message: the last one is the question.")
    parts = last.get("parts")
    if not isinstance(parts, list) or not all(isinstance(part, dict) for part in parts):
        raise InvalidMessage("The user message's parts must be an array of objects.")
    texts = [part.get("text") for part in parts if part.get("type") == "text"]
    if not texts:
        raise InvalidMessage("The last user message has no text part.")
    if not all(isinstance(text, str) for text in texts):
        raise InvalidMessage("A text part's text must be a string.")
    return "\n".join(texts)


@bp.post("/api/ai/chat")
async def chat(request: ChimeRequest) -> None:
    ctx = request.app.ctx
    user_id = await user_for(request)
    turn = chat_turn(json_object(request))
    if ctx.stopping:
        raise Unavailable()
    submitted = await ctx.answers.submit(user_id, turn.question, None, request.client_ip,
                                         create_as=conversation_for(turn.chat_id), again=turn.again)
    ctx.metrics.inc("chime_submissions_total", help="Questions submitted.")
    await stream_http(request, submitted.channel, 0, wire.ENCODER, content_type=wire.CONTENT_TYPE,
                      headers=wire.HEADERS, token=submitted.token)


# ---- the chat's answers -------------------------------------------------------------

async def chat_messages(request: ChimeRequest, chat_id: str) -> list[MessageRecord]:
    """The stored turns of the requester's chat; none without identity or before its first question."""
    user_id = await user_for(request)
    if user_id is None:
        return []
    store = request.app.ctx.store
    conversation = await store.get_conversation(conversation_id(user_id, chat_id))
    if conversation is None or conversation.user_id != user_id:
        return []
    messages: list[MessageRecord] = await store.messages(conversation.id)
    return messages


def answer_channels(messages: list[MessageRecord], *, running_only: bool) -> list[str]:
    """The chat's answers, newest first."""
    return [m.channel for m in reversed(messages) if m.role == "assistant" and m.channel
            and (m.status == "running" or not running_only)]


async def latest_answer(request: ChimeRequest, chat_id: str, *, running_only: bool) -> ChannelRecord | None:
    store = request.app.ctx.store
    for channel in answer_channels(await chat_messages(request, chat_id), running_only=running_only):
        record: ChannelRecord | None = await store.get_channel(channel)
        if record is not None and (record.running or not running_only):
            return record
    return None


# ---- GET /api/ai/chat/{id}/stream: the running answer, again ------------------------

@dataclass(frozen=True, slots=True)
class Position:
    """Where a resumed stream starts: at part ``index``, or (``from_end``) the last ``index`` parts."""

    index: int
    from_end: bool = False


def stream_position(request: ChimeRequest) -> Position | None:
    """``Last-Event-ID`` (resume after that part), else ``?startIndex=N``; None: from the start."""
    last_seen = non_negative_int(request.headers.get("last-event-id"), "Last-Event-ID")
    if last_seen is not None:
        return Position(min(last_seen + 1, MAX_EVENT_ID))
    raw = query_value(request, "startIndex")
    if raw is None:
        return None
    negative = raw.strip().startswith("-")
    index = non_negative_int(raw.strip()[1:] if negative else raw, "startIndex") or 0
    return Position(index, from_end=negative)


@bp.get("/api/ai/chat/<chat_id:str>/stream", unquote=True)
async def resume(request: ChimeRequest, chat_id: str) -> HTTPResponse | None:
    """Without a position, the running answer from its start (204 when none runs). A position
    is a client resuming an answer it has read part of: the chat's latest answer, running
    or ended since, from there (204 when nothing is left after it)."""
    position = stream_position(request)
    answer = await latest_answer(request, chat_id, running_only=position is None)
    if answer is None:
        return empty(status=204)
    last = wire.last_part(answer.last_event_id, not answer.running)
    headers = dict(wire.HEADERS)
    first = 0
    if position is not None and position.from_end:
        first = max(last + 1 - position.index, 0)
        headers[wire.TAIL_INDEX_HEADER] = str(last)
    elif position is not None:
        first = position.index
    if not answer.running and first > last:
        return empty(status=204)
    await stream_http(request, answer.id, wire.after_event(first), wire.encoder_from(first),
                      content_type=wire.CONTENT_TYPE, headers=headers)
    return None


# ---- POST /api/ai/chat/{id}/stop, GET /api/ai/chat/{id} ------------------------------

@bp.post("/api/ai/chat/<chat_id:str>/stop", unquote=True)
async def stop(request: ChimeRequest, chat_id: str) -> HTTPResponse:
    answers = request.app.ctx.answers
    stopped = False
    for channel in answer_channels(await chat_messages(request, chat_id), running_only=True):
        stopped = await answers.cancel(channel) or stopped
    return empty(status=202 if stopped else 204)


@bp.get("/api/ai/chat/<chat_id:str>", unquote=True)
async def history(request: ChimeRequest, chat_id: str) -> HTTPResponse:
    """The stored conversation as UI messages; an answer's id is its channel, the ``start``
    part's ``messageId``, so a resumed stream replaces that message instead of adding one."""
    store = request.app.ctx.store
    messages = []
    for m in await chat_messages(request, chat_id):
        if m.role not in ("user", "assistant") or not m.channel:
            continue
        running = m.role == "assistant" and m.status == "running"
        text = await store.channel_content(m.channel) if running else m.content
        messages.append({"id": m.channel if m.role == "assistant" else f"{m.channel}-question",
                         "role": m.role, "parts": [{"type": "text", "text": text}]})
    return json({"id": chat_id, "messages": messages})
