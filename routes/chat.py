"""Submitting: ``POST /api/chat`` starts an answer; ``POST /api/users`` makes a user."""

from __future__ import annotations

from sanic import Blueprint
from sanic.response import HTTPResponse, json

from errors import InvalidMessage, InvalidParameter, Unavailable
from routes.auth import set_cookie, user_for
from routes.params import json_object
from routes.streams import accepts_event_stream, stream_sse
from services import ChimeRequest

bp = Blueprint("chat")

MAX_MESSAGE_CHARS = 32_000


@bp.post("/api/users")
async def create_user(request: ChimeRequest) -> HTTPResponse:
    """A new anonymous user; a request carrying an unknown or malformed token gets 401 like anywhere."""
    await user_for(request)
    await request.app.ctx.limits.new_user(request.client_ip)
    user_id, token = await request.app.ctx.users.create()
    return json({"user_id": user_id, "token": token}, status=201)


@bp.post("/api/chat")
async def submit(request: ChimeRequest) -> HTTPResponse | None:
    ctx = request.app.ctx
    user_id = await user_for(request)
    body = json_object(request)
    message = checked_message(body.get("message"))
    conversation_id = body.get("conversation_id")
    if conversation_id is not None and not isinstance(conversation_id, str):
        raise InvalidParameter("conversation_id must be a string.")
    if ctx.stopping:
        raise Unavailable()
    submitted = await ctx.answers.submit(user_id, message, conversation_id, request.client_ip)
    ctx.metrics.inc("chime_submissions_total", help="Questions submitted.")

    channel, token = submitted.channel, submitted.token
    if accepts_event_stream(request):
        await stream_sse(request, channel, after=0, token=token)
        return None
    body = {
        "channel": channel,
        "conversation_id": submitted.conversation_id,
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
