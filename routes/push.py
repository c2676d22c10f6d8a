"""Push subscriptions: the VAPID public key, subscribing and unsubscribing."""

from __future__ import annotations

from sanic import Blueprint
from sanic.response import HTTPResponse, empty, json

from channels.store import Store
from errors import InvalidSubscription
from notify.addresses import RefusedEndpoint, resolve_public
from notify.subscriptions import InvalidKeys, parse_subscription
from routes.auth import require_user
from routes.params import json_object
from services import ChimeRequest

bp = Blueprint("push")

# Each browser profile is one subscription; a user past this many is most
# likely re-subscribing with fresh endpoints, so the oldest ones go.
MAX_SUBSCRIPTIONS_PER_USER = 20


@bp.get("/api/push/vapid-public-key")
async def vapid_public_key(request: ChimeRequest) -> HTTPResponse:
    return json({"public_key": request.app.ctx.vapid.public_key}, headers={"Cache-Control": "no-cache"})


@bp.post("/api/push/subscriptions")
async def subscribe(request: ChimeRequest) -> HTTPResponse:
    """Store the caller's ``PushSubscription.toJSON()``; 400 before anything is stored when it is unusable."""
    ctx = request.app.ctx
    user_id = await require_user(request)
    allow_private = ctx.settings.push_allow_private
    try:
        subscription = parse_subscription(json_object(request), allow_private=allow_private)
        if not allow_private:
            await resolve_public(subscription.endpoint)
    except (RefusedEndpoint, InvalidKeys) as exc:
        raise InvalidSubscription(str(exc)) from None
    await ctx.store.save_subscription(user_id, subscription.endpoint.url, subscription.p256dh, subscription.auth)
    await _drop_oldest(ctx.store, user_id)
    return json({"endpoint": subscription.endpoint.url}, status=201)


async def _drop_oldest(store: Store, user_id: str) -> None:
    subscriptions = await store.subscriptions_for(user_id)  # oldest first
    for old in subscriptions[:max(0, len(subscriptions) - MAX_SUBSCRIPTIONS_PER_USER)]:
        await store.delete_subscription(old.endpoint, user_id)


@bp.delete("/api/push/subscriptions")
async def unsubscribe(request: ChimeRequest) -> HTTPResponse:
    """Remove the caller's subscription with that endpoint; 204 also when there was none (idempotent)."""
    user_id = await require_user(request)
    endpoint = json_object(request).get("endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise InvalidSubscription("endpoint must be the subscription's URL.")
    await request.app.ctx.store.delete_subscription(endpoint, user_id)
    return empty(status=204)
