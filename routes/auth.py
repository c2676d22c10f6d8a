"""Identity: anonymous users holding bearer tokens (stored only as hashes)."""

from __future__ import annotations

from sanic import HTTPResponse

from channels.answers import hash_token, new_id, new_token
from channels.store import Store
from errors import Unauthenticated
from services import ChimeRequest

COOKIE = "chime_token"
COOKIE_MAX_AGE_S = 400 * 24 * 3600
# Sent with a 401 for an unknown cookie: page scripts cannot clear an HttpOnly
# cookie, so without this a browser whose user is gone would stay locked out.
EXPIRED_COOKIE = f"{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"
# Issued tokens have 43 characters; anything much longer is not worth hashing.
MAX_TOKEN_CHARS = 256


def is_token_text(token: str) -> bool:
    """Issued tokens are short URL-safe ASCII; header bytes that are not UTF-8 arrive as
    lone surrogates, which cannot even be hashed, so such a value is simply not a token."""
    return len(token) <= MAX_TOKEN_CHARS and token.isascii() and token.isprintable()


def presented_token(request: ChimeRequest, *, allow_query: bool = False) -> str | None:
    """The token the request carries: bearer header, else cookie, else (streams only) query."""
    header: str | None = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("The Authorization header must be 'Bearer <token>'.")
        return token.strip()
    cookie: str | None = request.cookies.get(COOKIE)
    if cookie:
        return cookie
    if allow_query:
        query_token: str | None = request.args.get("access_token")
        return query_token or None
    return None


async def user_for(request: ChimeRequest, *, allow_query: bool = False) -> str | None:
    """The user the request identifies; None without identity; 401 for an unknown token."""
    token = presented_token(request, allow_query=allow_query)
    if token is None:
        return None
    user_id = await request.app.ctx.users.lookup(token)
    if user_id is None:
        from_cookie = "authorization" not in request.headers and request.cookies.get(COOKIE) == token
        raise Unauthenticated("Unknown token: make a new user with POST /api/users.",
                              headers={"Set-Cookie": EXPIRED_COOKIE} if from_cookie else None)
    return user_id


async def require_user(request: ChimeRequest, *, allow_query: bool = False) -> str:
    user_id = await user_for(request, allow_query=allow_query)
    if user_id is None:
        raise Unauthenticated()
    return user_id


def set_cookie(response: HTTPResponse, token: str, secure: bool) -> None:
    response.add_cookie(COOKIE, token, httponly=True, samesite="Lax", path="/",
                        max_age=COOKIE_MAX_AGE_S, secure=secure)


class Users:
    """Creates users and resolves tokens, with a bounded cache of known tokens."""

    CACHE_ENTRIES = 10_000

    def __init__(self, store: Store):
        self.store = store
        self._cache: dict[str, str] = {}

    async def create(self) -> tuple[str, str]:
        user_id, token = new_id(), new_token()
        await self.store.create_user(user_id, hash_token(token))
        return user_id, token

    def remember(self, user_id: str, token_hash: str) -> None:
        """A user made elsewhere (a submission without identity): its token is known from now on."""
        self._keep(token_hash, user_id)

    async def lookup(self, token: str) -> str | None:
        """The token's user; None for a token this server never issued (unknown, or not even ASCII)."""
        if not is_token_text(token):
            return None
        hashed = hash_token(token)
        user_id = self._cache.get(hashed)
        if user_id is None:
            user_id = await self.store.user_for_token_hash(hashed)
            if user_id is not None:
                self._keep(hashed, user_id)
        return user_id

    def _keep(self, token_hash: str, user_id: str) -> None:
        if len(self._cache) >= self.CACHE_ENTRIES:
            self._cache.pop(next(iter(self._cache)))
        self._cache[token_hash] = user_id
