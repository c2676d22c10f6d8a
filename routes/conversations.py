"""Conversations: list, read, delete."""

from __future__ import annotations

from sanic import Blueprint
from sanic.response import HTTPResponse, empty, json

from channels.store import ConversationRecord
from routes.auth import require_user
from services import ChimeRequest

bp = Blueprint("conversations")


async def owned_conversation(request: ChimeRequest, conversation_id: str) -> ConversationRecord:
    return await request.app.ctx.answers.conversation_of(await require_user(request), conversation_id)


@bp.get("/api/conversations")
async def list_conversations(request: ChimeRequest) -> HTTPResponse:
    user_id = await require_user(request)
    conversations = await request.app.ctx.store.list_conversations(user_id)
    return json({"conversations": [
        {"id": c.id, "title": c.title, "updated_at": c.updated_at, "created_at": c.created_at}
        for c in conversations]})


@bp.get("/api/conversations/<conversation_id:str>")
async def get_conversation(request: ChimeRequest, conversation_id: str) -> HTTPResponse:
    store = request.app.ctx.store
    conversation = await owned_conversation(request, conversation_id)
    messages = []
    for m in await store.messages(conversation.id):
        running = m.role == "assistant" and m.status == "running"
        content = await store.channel_content(m.channel) if running and m.channel else m.content
        messages.append({"role": m.role, "content": content, "channel": m.channel,
                         "created_at": m.created_at, "status": m.status})
    return json({"id": conversation.id, "title": conversation.title, "created_at": conversation.created_at,
                 "updated_at": conversation.updated_at, "messages": messages})


@bp.delete("/api/conversations/<conversation_id:str>")
async def delete_conversation(request: ChimeRequest, conversation_id: str) -> HTTPResponse:
    conversation = await owned_conversation(request, conversation_id)
    await request.app.ctx.answers.delete_conversation(conversation.id)
    return empty(status=204)
