"""Submitting: ``POST /api/chat`` starts an answer; ``POST /api/users`` makes a user."""

from __future__ import annotations

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from errors import InvalidMessage, InvalidParameter, NotFound, Unavailable
from llm.context import build_messages
from routes.auth import new_id, set_cookie, user_for
from routes.params import json_object
from routes.streams import accepts_event_stream, stream_sse

bp = Blueprint("chat")

MAX_MESSAGE_CHARS = 32_000
MAX_TITLE_CHARS = 80


@bp.post("/api/users")
async def create_user(request: Request) -> HTTPResponse:
    """A new anonymous user; a request carrying an unknown or malformed token gets 401 like anywhere."""
    await user_for(request)
    user_id, token = await request.app.ctx.users.create()
    return json({"user_id": user_id, "token": token}, status=201)


@bp.post("/api/chat")
async def submit(request: Request) -> HTTPResponse | None:
    ctx = request.app.ctx
    user_id = await user_for(request)
    body = json_object(request)
    message = checked_message(body.get("message"))
    conversation_id = body.get("conversation_id")
    if conversation_id is not None and not isinstance(conversation_id, str):
        raise InvalidParameter("conversation_id must be a string.")
    if ctx.stopping:
        raise Unavailable()

    conversation = None
    if conversation_id is not None:
        conversation = await ctx.store.get_conversation(conversation_id)
        if conversation is None or conversation.user_id != user_id:
            raise NotFound("No such conversation.")

    token = None
    if user_id is None:
        user_id, token = await ctx.users.create()
    # Checked and reserved at once: concurrent submissions cannot all slip past the limits.
    with ctx.limits.admit(user_id):
        if conversation is None:
            conversation = await ctx.store.create_conversation(new_id(), user_id, title_for(message))
            history = []
        else:
            history = await ctx.store.messages(conversation.id)

        channel = new_id()
        await ctx.store.create_channel(channel, user_id, conversation.id, ctx.settings.model_name)
        await ctx.store.add_turn(conversation.id, message, channel)
        settings = ctx.settings
        ctx.generations.start(channel, user_id, build_messages(
            settings.system_prompt, history, message, settings.history_budget_chars))
    ctx.metrics.inc("chime_submissions_total", help="Questions submitted.")

    if accepts_event_stream(request):
        await stream_sse(request, channel, after=0, token=token)
        return None
    body = {
        "channel": channel,
        "conversation_id": conversation.id,
        "events_url": f"/api/channels/{channel}/events",
        "ws_url": f"/api/channels/{channel}/ws",
        "answer_url": f"/c/{channel}",
    }
    if token is not None:
        body["token"] = token
    response = json(body, status=201)
    if token is not None:
        set_cookie(response, token, secure=request.scheme == "https")
    return response


def checked_message(raw: object) -> str:
    if not isinstance(raw, str):
        raise InvalidMessage("message must be a string." if raw is not None else "message is required.")
    message = raw.strip()
    if not message:
        raise InvalidMessage("message must not be empty.")
    if len(message) > MAX_MESSAGE_CHARS:
        raise InvalidMessage(f"message must be at most {MAX_MESSAGE_CHARS} characters; it has {len(message)}.")
    return message


def title_for(message: str) -> str:
    """Whitespace collapsed; longer than 80 characters, cut so that with the ``…`` it is 80."""
    title = " ".join(message.split())
    if len(title) > MAX_TITLE_CHARS:
        title = title[:MAX_TITLE_CHARS - 1] + "…"
    return title
