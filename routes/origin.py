"""Other sites may not change anything here: a state-changing request from a foreign origin is 403.

A page on another site can make a browser send a ``POST`` (a form with
``enctype="text/plain"`` needs no CORS preflight) or open a WebSocket to this
server; the browser then names that page's origin in ``Origin``. Such a request
is refused before any handler runs, so it leaves no trace: no answer, no
subscription, no new user and no cookie. ``SameSite=Lax`` alone does not stop
it: a same-site page on another port or a sibling subdomain still gets the
cookie sent.

A request without ``Origin`` (curl, SDKs, server-to-server) is not refused
for that reason: only browsers send it, and they always do on these methods.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from errors import CrossOrigin
from services import ChimeRequest

STATE_CHANGING = frozenset(("POST", "PUT", "PATCH", "DELETE"))
DEFAULT_PORTS = {"http": "80", "https": "443"}
WEB_SCHEMES = {"ws": "http", "wss": "https"}


def normalized(origin: str) -> str:
    """``scheme://host[:port]`` in lower case, without the scheme's default port."""
    scheme, _, authority = origin.strip().lower().rstrip("/").partition("://")
    scheme = WEB_SCHEMES.get(scheme, scheme)
    host, colon, port = authority.rpartition(":")
    if colon and port.isdigit() and port == DEFAULT_PORTS.get(scheme):
        authority = host
    return f"{scheme}://{authority}"


def own_origin(request: ChimeRequest) -> str:
    """This server's origin as the client addressed it (or as a trusted proxy forwarded it)."""
    return normalized(f"{request.scheme}://{request.host}")


def changes_state(request: ChimeRequest) -> bool:
    return request.method in STATE_CHANGING or request.headers.get("upgrade", "").lower() == "websocket"


def checker(allowed: Iterable[str]) -> Callable[[ChimeRequest], Coroutine[Any, Any, None]]:
    """The request middleware: 403 cross_origin for a state change from a foreign ``Origin``."""
    trusted = frozenset(normalized(origin) for origin in allowed)

    async def refuse_cross_origin(request: ChimeRequest) -> None:
        origin = request.headers.get("origin")
        if origin is None or not changes_state(request):
            return
        if origin.strip().lower() == "null":
            raise CrossOrigin()
        theirs = normalized(origin)
        if theirs != own_origin(request) and theirs not in trusted:
            raise CrossOrigin()

    return refuse_cross_origin
