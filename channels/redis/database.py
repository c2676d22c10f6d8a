"""The connection both seams of ``RedisStore`` share: its deadlines, its scripts, its health probe.

Every command runs with ``timeout_s`` as its socket timeout (connecting too), so a
Redis that does not answer in time is a ``StoreUnavailable`` within seconds, as
``channels.store`` requires; so are a Redis that is loading, read-only (a replica
after a failover), out of memory or unable to persist.

Every write is a script (``channels.redis.scripts``) that carries a deadline on
the Redis server's clock: this process keeps the offset between its monotonic
clock and Redis's ``TIME`` (measured at open, by each health probe, and again
whenever a script finds its deadline passed), and gives each script until
``timeout_s`` less a margin from now. A write this process gave up on can
therefore never land later. The scripts are idempotent, so a write whose
outcome is unknown (the connection dropped, the reply never came) is sent once
more, which settles it either way.

The client has redis-py's own retries off: what is sent again, and when, is
decided here and in ``channels.redis.log``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
import redis.asyncio
import redis.asyncio.client
import redis.exceptions
from hiredis import pack_command
from redis.backoff import NoBackoff
from redis.retry import Retry

from channels.redis.keys import Keys
from channels.redis.scripts import LATE_ERROR, REFUSED_ERROR, SCRIPTS, Script
from channels.store import StoreUnavailable

log = logging.getLogger("chime.store")

# Every command's socket timeout, and how long connecting may take.
TIMEOUT_S = 3.0
# A write script may start at most this long before its caller gives up on it: the rest of
# ``timeout_s`` covers the trip there and back and the error of the clock offset.
DEADLINE_MARGIN_S = 0.5
# How long ``writable`` reuses its last answer: a flood of health checks costs one probe.
WRITABLE_CACHE_S = 1.0

# Errors that say the command was not (or may not have been) run: Redis cannot be reached,
# did not answer in time, or cannot serve now. Sending again later may succeed.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError, asyncio.TimeoutError)
# Error replies that mean "not now": loading, a replica, a failover, out of memory, cannot persist.
BUSY_REPLIES = frozenset({"LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "BUSY", "OOM",
                          "NOREPLICAS", "MISCONF"})


# Connections for commands (reads and write rounds); more callers at once wait for one.
POOL_CONNECTIONS = 32

class Refused(Exception):
    """A record script refused the write (a taken id, an unknown user or conversation); nothing changed."""


class _Late(Exception):
    """A script found its deadline passed; nothing changed."""


def busy_reply(exc: BaseException) -> bool:
    """Whether ``exc`` is an error reply of a Redis that cannot serve now (nothing was run)."""
    return isinstance(exc, redis.exceptions.ResponseError) and str(exc).split(" ", 1)[0] in BUSY_REPLIES


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def round_trip(connection: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """``commands`` on one redis-py ``connection``, packed by hiredis and written at once: each
    one's reply, or the ``ResponseError`` it was. A connection error or timeout is raised as it
    comes (redis-py drops the connection: the outcome is then unknown).

    For the group commit's thousands of arguments and the peers' batches: redis-py packs each
    argument in Python (half the CPU of a round), hiredis packs them in C.
    """
    await connection.send_packed_command(b"".join(map(pack_command, commands)), check_health=False)
    replies: list[Any] = []
    for _ in commands:
        try:
            replies.append(await connection.read_response())
        except redis.exceptions.ResponseError as exc:
            replies.append(exc)
    return replies


def unavailable(exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"Redis is unavailable: {exc}")


class RedisDatabase:
    """One Redis under one key prefix: the command client, deadlines, scripts, health."""

    def __init__(self, url: str, *, prefix: str = "chime", timeout_s: float = TIMEOUT_S) -> None:
        self.url = url
        self.keys = Keys(prefix)
        self.timeout_s = timeout_s
        # Tags this store's publishes, so that its own commits are not told twice.
        self.origin = secrets.token_hex(8)
        self._client: redis.asyncio.Redis | None = None
        self._clock_offset_ms = 0.0  # Redis's TIME less this process's monotonic clock
        self._writable: tuple[float, bool] = (0.0, False)  # (until when, the answer)
        self._probe: asyncio.Task[bool] | None = None

    # ---- lifecycle -------------------------------------------------------

    async def open(self) -> None:
        self._client = self.connect(socket_timeout=self.timeout_s)
        try:
            await self._read(lambda _: self._sync_clock())
            await self._read(self._load_scripts)
            await self._warn_unless_persistent()
        except BaseException:
            await self._client.aclose()
            self._client = None
            raise

    @staticmethod
    async def _load_scripts(client: redis.asyncio.Redis) -> None:
        async with client.pipeline(transaction=False) as pipe:
            for script in SCRIPTS:
                pipe.script_load(script.source)
            await pipe.execute()

    async def close(self) -> None:
        if self._probe is not None:
            await asyncio.gather(self._probe, return_exceptions=True)
            self._probe = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def connect(self, socket_timeout: float | None) -> redis.asyncio.Redis:
        """A client of this store's Redis; ``socket_timeout=None`` for one that blocks (pub/sub)."""
        # TCP keepalive finds a connection whose peer vanished (a lost host) that nothing is sent on.
        tcp: dict[str, Any] = {} if self.url.startswith("unix:") else {"socket_keepalive": True}
        if socket_timeout is None:
            return redis.asyncio.Redis.from_url(
                self.url, socket_timeout=None, socket_connect_timeout=self.timeout_s,
                retry=Retry(NoBackoff(), 0), decode_responses=False, **tcp)
        # A bounded pool whose callers wait (within the deadline) for a free connection:
        # redis-py's default pool raises past 100 at once, which a burst of readers reaches.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            self.url, max_connections=POOL_CONNECTIONS, timeout=self.timeout_s, socket_timeout=socket_timeout,
            socket_connect_timeout=self.timeout_s, retry=Retry(NoBackoff(), 0), decode_responses=False, **tcp)
        return redis.asyncio.Redis(connection_pool=pool)

    @property
    def _r(self) -> redis.asyncio.Redis:
        assert self._client is not None, "store is not open"
        return self._client

    async def _warn_unless_persistent(self) -> None:
        try:
            replies: list[dict[str | bytes, str | bytes]] = await self._read(
                lambda r: asyncio.gather(r.config_get("appendonly"), r.config_get("save")))
        except redis.exceptions.ResponseError:  # CONFIG renamed or refused (a managed Redis): its business
            return
        # redis-py decodes CONFIG GET's reply itself (str), whatever the client's setting.
        config = {_text(name): _text(value) for reply in replies for name, value in reply.items()}
        appendonly, save = config.get("appendonly", ""), config.get("save", "")
        if appendonly != "yes" and not save.strip():
            log.warning("Redis at %s keeps nothing on disk (appendonly no, save \"\"): a restart of Redis "
                        "loses every answer; see the README for the persistence settings", self.url)
        elif appendonly != "yes":
            log.warning("Redis at %s only takes snapshots (save %r, appendonly no): a restart of Redis loses "
                        "what was written since the last one", self.url, save)

    # ---- deadlines -------------------------------------------------------

    async def _sync_clock(self) -> None:
        """Measure the offset of Redis's clock (``TIME``) from this process's monotonic one."""
        before = time.monotonic()
        seconds, micros = await self._r.time()
        after = time.monotonic()
        self._clock_offset_ms = seconds * 1000 + micros / 1000 - (before + after) * 500

    def deadline_ms(self) -> int:
        """The last millisecond on Redis's clock at which a write sent now may still run."""
        return int((time.monotonic() + self.timeout_s - DEADLINE_MARGIN_S) * 1000 + self._clock_offset_ms)

    # ---- reads and scripts -----------------------------------------------

    async def _read(self, call: Callable[[redis.asyncio.Redis], Awaitable[Any]]) -> Any:
        """Run a read; a dropped connection is tried once more, then it is unavailable.

        The reply is as Redis sent it (bytes, lists of bytes: the client decodes nothing);
        each caller names its type where it takes it."""
        try:
            try:
                return await call(self._r)
            except redis.exceptions.ConnectionError:
                return await call(self._r)
        except CONNECTION_ERRORS as exc:
            raise unavailable(exc) from exc
        except redis.exceptions.ResponseError as exc:
            if busy_reply(exc):
                raise unavailable(exc) from exc
            raise

    async def _pipelined(self, commands: Callable[[redis.asyncio.client.Pipeline], object]) -> list[Any]:
        """Read with the commands ``commands`` queues, in one round trip."""
        async def run(client: redis.asyncio.Redis) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            commands(pipe)
            replies: list[Any] = await pipe.execute()
            return replies
        replies: list[Any] = await self._read(run)
        return replies

    async def _script(self, script: Script, payload: dict[str, Any]) -> Any:
        """Run a record script with ``payload`` (and the prefix) as its JSON argument.

        Its outcome is settled here: a script that was not loaded is loaded, one that
        found its deadline passed is sent again once the clock is measured again, and one
        whose outcome is unknown is sent once more (it is idempotent). Raises ``Refused``
        when it refuses, ``StoreUnavailable`` when Redis cannot run it in time.
        """
        argument = orjson.dumps({"p": self.keys.prefix, **payload})
        tries = 0
        while True:
            tries += 1
            try:
                return await self._evalsha(script, [], [self.deadline_ms(), argument])
            except _Late as exc:
                if tries > 1:
                    raise unavailable(exc) from exc
                await self._read(lambda _: self._sync_clock())
            except CONNECTION_ERRORS as exc:
                if tries > 1:
                    raise unavailable(exc) from exc
            except redis.exceptions.ResponseError as exc:
                if busy_reply(exc):
                    raise unavailable(exc) from exc
                raise

    async def _evalsha(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            try:
                return await self._r.evalsha(script.sha, len(keys), *keys, *args)
            except redis.exceptions.NoScriptError:  # Redis restarted or its script cache was flushed
                await self._r.script_load(script.source)
                return await self._r.evalsha(script.sha, len(keys), *keys, *args)
        except redis.exceptions.ResponseError as exc:
            code, _, reason = str(exc).partition(" ")
            if code == REFUSED_ERROR:
                raise Refused(reason) from None
            if code == LATE_ERROR:
                raise _Late(reason) from None
            raise

    async def _run_packed(self, command: tuple[Any, ...]) -> Any:
        """Run one command on a connection of the pool (``round_trip``): its reply, or the
        ``ResponseError`` it was."""
        pool = self._r.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]  # unannotated in redis-py
        try:
            return (await round_trip(connection, [command]))[0]
        finally:
            await pool.release(connection)

    # ---- health ----------------------------------------------------------

    async def writable(self) -> bool:
        """Whether Redis takes a write now (a tiny one, which a replica, a Redis out of memory
        or one that cannot persist refuses). One probe at a time, its answer reused for
        ``WRITABLE_CACHE_S``; it measures the clock offset again on the way."""
        until, answer = self._writable
        if time.monotonic() < until:
            return answer
        if self._probe is None:
            self._probe = asyncio.get_running_loop().create_task(self._run_probe(), name="chime-store-probe")
        # Shielded: a caller that hangs up does not cancel the answer the others wait for.
        return await asyncio.shield(self._probe)

    async def _run_probe(self) -> bool:
        try:
            await self._sync_clock()
            await self._r.set(self.keys.probe, self.origin, px=int(WRITABLE_CACHE_S * 10_000))
            answer = True
        except Exception as exc:
            log.warning("Redis cannot be written: %s", exc)
            answer = False
        self._writable = (time.monotonic() + WRITABLE_CACHE_S, answer)
        self._probe = None
        return answer
