"""A channel as a record: read it, cancel its answer, report the page's visibility."""

from __future__ import annotations

from sanic import Blueprint
from sanic.response import HTTPResponse, empty, json

from errors import AlreadyFinished, InvalidJson
from routes.auth import require_user
from routes.params import json_object
from routes.streams import owned_channel
from services import ChimeRequest

bp = Blueprint("channels")


@bp.get("/api/channels/<channel_id:str>")
async def get_channel(request: ChimeRequest, channel_id: str) -> HTTPResponse:
    store = request.app.ctx.store
    record = await owned_channel(request, channel_id, await require_user(request))
    return json({
        "channel": record.id,
        "conversation_id": record.conversation_id,
        "status": record.status,
        "content": await store.channel_content(record.id),
        "last_event_id": record.last_event_id,
        "created_at": record.created_at,
        "finished_at": record.finished_at,
        "usage": record.usage,
        "model": record.model,
    })


@bp.post("/api/channels/<channel_id:str>/cancel")
async def cancel(request: ChimeRequest, channel_id: str) -> HTTPResponse:
    record = await owned_channel(request, channel_id, await require_user(request))
    if not record.running or not await request.app.ctx.answers.cancel(record.id):
        raise AlreadyFinished()
    return json({"channel": record.id, "status": "cancelling"}, status=202)


@bp.post("/api/channels/<channel_id:str>/presence")
async def presence(request: ChimeRequest, channel_id: str) -> HTTPResponse:
    user_id = await require_user(request)
    body = json_object(request)
    visible = body.get("visible")
    if not isinstance(visible, bool):
        raise InvalidJson("visible must be true or false.")
    record = await owned_channel(request, channel_id, user_id)
    if record.running:  # a finished channel's report would be kept for nothing, forever
        request.app.ctx.presence.report(record.id, visible)
    return empty(status=204)
