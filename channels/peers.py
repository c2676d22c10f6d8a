"""Peers: the other processes serving the same Redis, and which of them runs which answer.

Each process holds a lease, a key that lives ``ttl_s`` unless renewed (every
third of it). A running answer is claimed by the process generating it (the
hash ``owners``: channel → process) and released when it ends. From that:

- ``owned_elsewhere`` is what a sweeper must leave alone: the channels whose
  owner's lease is alive. A channel running in the store and owned by no live
  process (its process was killed, its host lost) is ended ``server_lost`` by
  the sweep of any live process; the log's one-terminal rule makes concurrent
  sweeps harmless.
- ``cancel_elsewhere`` asks the live owner of an answer to cancel it (its
  generation appends ``cancelled`` itself), over pub/sub: one channel per process.
- limits (``channels.limits.Counters``): running slots and one-minute windows,
  checked and counted in one script; a dead process's slots stop counting.
- presence (``channels.presence.Board``): each process posts how many readers of
  a channel it has and how many are in view (a hash per channel, a field per
  process); the push decision counts those of live processes; a report for a
  whole channel is passed to every process over pub/sub.

Without Redis (one process on SQLite) there are no peers: ``Generations`` runs
without this.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from channels.redis.database import round_trip
from channels.redis.scripts import Script
from channels.redis.watch import Subscriber
from channels.store import StoreUnavailable

log = logging.getLogger("chime.peers")

# Commands that take longer than this fail (StoreUnavailable) rather than hold a request.
COMMAND_TIMEOUT_S = 3.0
# A channel's posted presence goes this long after its last change (answers end well before).
PRESENCE_TTL_S = 24 * 3600

# ``channels.limits.Counters``, each one atomic step. Running slots are counted per process
# (a hash per process: user -> slots, "" -> all its slots) so that a dead process's slots,
# whose lease is gone, stop counting; the one-minute windows are sorted sets of times, on
# Redis's clock (hosts' clocks may disagree).
# KEYS: none (names from ARGV[1], the prefix). ARGV: prefix, this process, user, max running,
# max total (-1: none), per minute, a unique member. Returns {0, 0} or {which, retry after s}.
RESERVE = Script("reserve", """
local p, me, user = ARGV[1], ARGV[2], ARGV[3]
local max_running, max_total, per_minute = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local mine, total = 0, 0
for _, peer in ipairs(redis.call('SMEMBERS', p .. ':slots')) do
  local slots = p .. ':slots:' .. peer
  if redis.call('EXISTS', p .. ':peer:' .. peer) == 1 then
    mine = mine + tonumber(redis.call('HGET', slots, user) or '0')
    total = total + tonumber(redis.call('HGET', slots, '') or '0')
  else
    redis.call('DEL', slots)
    redis.call('SREM', p .. ':slots', peer)
  end
end
if mine >= max_running then return {1, 1} end
if max_total >= 0 and total >= max_total then return {2, 1} end
local asked = p .. ':asked:' .. user
redis.call('ZREMRANGEBYSCORE', asked, '-inf', now - 60000)
if redis.call('ZCARD', asked) >= per_minute then
  local oldest = tonumber(redis.call('ZRANGE', asked, 0, 0, 'WITHSCORES')[2])
  return {3, math.max(1, math.ceil((oldest + 60000 - now) / 1000))}
end
redis.call('ZADD', asked, now, ARGV[7])
redis.call('PEXPIRE', asked, 60000)
redis.call('SADD', p .. ':slots', me)
redis.call('HINCRBY', p .. ':slots:' .. me, user, 1)
redis.call('HINCRBY', p .. ':slots:' .. me, '', 1)
return {0, 0}
""")
# ARGV: prefix, this process, user.
UNRESERVE = Script("unreserve", """
local slots = ARGV[1] .. ':slots:' .. ARGV[2]
if tonumber(redis.call('HINCRBY', slots, ARGV[3], -1)) <= 0 then redis.call('HDEL', slots, ARGV[3]) end
if tonumber(redis.call('HINCRBY', slots, '', -1)) <= 0 then redis.call('HDEL', slots, '') end
return 0
""")
# ARGV: prefix, address, per minute, a unique member. Returns 0 (counted) or the seconds to wait.
NEW_USER = Script("new_user", """
local made = ARGV[1] .. ':new-users:' .. ARGV[2]
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', made, '-inf', now - 60000)
if redis.call('ZCARD', made) >= tonumber(ARGV[3]) then
  local oldest = tonumber(redis.call('ZRANGE', made, 0, 0, 'WITHSCORES')[2])
  return math.max(1, math.ceil((oldest + 60000 - now) / 1000))
end
redis.call('ZADD', made, now, ARGV[4])
redis.call('PEXPIRE', made, 60000)
return 0
""")
# ARGV: prefix, this process, the channel's presence key. 1 when a reader on another live
# process has its page in view.
VISIBLE_ELSEWHERE = Script("visible_elsewhere", """
local posted = redis.call('HGETALL', ARGV[3])
for i = 1, #posted, 2 do
  local peer, counts = posted[i], posted[i + 1]
  if peer ~= ARGV[2] and tonumber(string.match(counts, ' (%d+)$')) > 0
      and redis.call('EXISTS', ARGV[1] .. ':peer:' .. peer) == 1 then
    return 1
  end
end
return 0
""")
_REFUSED = {1: "running", 2: "total", 3: "per_minute"}
# Connections for the commands of this process's requests and answers; more callers wait for one.
POOL_CONNECTIONS = 16


class _Batch:
    """Commands of many callers sent in one pipelined round trip, as the log's group commit does:
    a thousand answers ending together cost a few round trips, not a thousand.

    The commands go in one ``round_trip`` (packed by hiredis, written at once): an answer's end
    is a few small commands (its claim and slot given back, its readers'
    visibility asked), and redis-py's pipeline cost more CPU than they did. A script is sent
    as EVALSHA, loaded only when Redis answers NOSCRIPT (it restarted, or its cache was
    flushed): redis-py's own scripts in a pipeline ask ``SCRIPT EXISTS`` first, a second round
    trip on every batch."""

    def __init__(self, url: str):
        # A connection of its own, as batches go one at a time. Without a socket timeout (redis-py
        # runs each write of one in a task of its own): a round trip is bounded as a whole.
        self._pool = aioredis.ConnectionPool.from_url(url, max_connections=1, socket_timeout=None,
                                                      socket_connect_timeout=COMMAND_TIMEOUT_S)
        self._connection: Any = None  # redis-py's asyncio Connection, unannotated
        self._pending: list[_Call] = []
        self._sending: asyncio.Task[None] | None = None

    def run(self, *command: Any) -> asyncio.Future[Any]:
        """One command (``"HDEL", key, field``); the future gets its reply (or its error)."""
        return self._queue(_Call(command, asyncio.get_running_loop().create_future()))

    def run_script(self, script: Script, args: list[Any]) -> asyncio.Future[Any]:
        """``script`` with no keys and ``args``; the future gets its reply (or its error)."""
        return self._queue(_Call(("EVALSHA", script.sha, 0, *args), asyncio.get_running_loop().create_future(),
                                 script))

    def _queue(self, call: _Call) -> asyncio.Future[Any]:
        self._pending.append(call)
        if self._sending is None:
            self._sending = asyncio.get_running_loop().create_task(self._send(), name="chime-peers-batch")
        return call.future

    async def _send(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    replies = await self._round_trip([call.command for call in batch])
                    unloaded = [n for n, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
                    if unloaded:
                        again = [batch[n] for n in unloaded]
                        await self._load({call.script for call in again if call.script is not None})
                        for n, reply in zip(unloaded, await self._round_trip([call.command for call in again]),
                                            strict=True):
                            replies[n] = reply
                except Exception as exc:
                    for call in batch:
                        if not call.future.done():
                            call.future.set_exception(exc)
                    continue
                for call, reply in zip(batch, replies, strict=True):
                    if call.future.done():
                        continue
                    if isinstance(reply, Exception):
                        call.future.set_exception(reply)
                    else:
                        call.future.set_result(reply)
        finally:
            self._sending = None

    async def _load(self, scripts: set[Script]) -> None:
        for reply in await self._round_trip([("SCRIPT", "LOAD", script.source) for script in scripts]):
            if isinstance(reply, Exception):
                raise reply

    async def close(self) -> None:
        await self._pool.aclose()

    async def _round_trip(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Each command's reply, or the ``ResponseError`` it was; a connection error or timeout
        (``COMMAND_TIMEOUT_S``) is raised, and the connection dropped: its replies are unknown."""
        if self._connection is None:
            self._connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        connection = self._connection
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                # Closed by Redis (it restarted), or out of step: started afresh. redis-py's own pool
                # check is off while its maintenance notifications are "auto", as they are here.
                if connection.is_connected and await connection.can_read():
                    await connection.disconnect()
                return await round_trip(connection, commands)
        except BaseException:
            await connection.disconnect(nowait=True)
            raise


@dataclass(frozen=True, slots=True, eq=False)
class _Call:
    command: tuple[Any, ...]
    future: asyncio.Future[Any]
    script: Script | None = None


class RedisPeers:
    """This process among the others on one Redis: its lease and claims, cancels routed to the
    owner, and the presence and limits counted across processes (see the module docstring)."""

    def __init__(self, url: str, on_cancel: Callable[[str], object], *, prefix: str = "chime",
                 ttl_s: float = 5.0):
        self.id = secrets.token_hex(8)
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.on_cancel = on_cancel
        # Told of whole-channel presence reports made through other processes.
        self.on_report: Callable[[str, bool], object] | None = None
        self._prefix = prefix
        self._lease = f"{prefix}:peer:{self.id}"
        self._lease_prefix = f"{prefix}:peer:"
        self._owners = f"{prefix}:owners"
        self._cancels = f"{prefix}:peer:{self.id}:cancel"
        self._reports = f"{prefix}:presence-reports"
        # A bounded pool that waits for a free connection (redis-py's default pool raises past 100).
        self._redis = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
            url, max_connections=POOL_CONNECTIONS, timeout=COMMAND_TIMEOUT_S, socket_timeout=COMMAND_TIMEOUT_S,
            socket_connect_timeout=COMMAND_TIMEOUT_S))
        self._batch = _Batch(url)
        # A subscribed connection blocks on its read without end (redis-py #2807: no timeout); the
        # store's Subscriber reads it, reconnects, and replaces it when it goes silent.
        self._listener = aioredis.Redis.from_url(url, socket_timeout=None,
                                                 socket_connect_timeout=COMMAND_TIMEOUT_S)
        self._subscriber: Subscriber | None = None
        self._subscribed: dict[bytes, asyncio.Future[None]] = {}  # each name's first confirmation
        self._tasks: list[asyncio.Task[None]] = []
        self._new_user = self._redis.register_script(NEW_USER.source)

    async def open(self) -> None:
        await self._renew()
        loop = asyncio.get_running_loop()
        names = (self._cancels.encode(), self._reports.encode())
        self._subscribed = {name: loop.create_future() for name in names}
        self._subscriber = Subscriber(self._listener, self._on_message, self._on_live, reply_s=COMMAND_TIMEOUT_S)
        for name in names:
            self._subscriber.subscribe(name)
        try:  # a cancel sent once this returns is heard
            await asyncio.wait_for(asyncio.gather(*self._subscribed.values()), COMMAND_TIMEOUT_S)
        except TimeoutError:
            await self._subscriber.close()
            self._subscriber = None
            raise StoreUnavailable("Redis did not confirm this process's subscriptions in time") from None
        self._tasks = [loop.create_task(self._keep_lease(), name="chime-peer-lease")]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self._redis.delete(self._lease)
        except RedisError:
            log.warning("could not give up this process's lease; it runs out by itself", exc_info=True)
        await self._redis.aclose()
        await self._batch.close()
        if self._subscriber is not None:
            await self._subscriber.close()  # closes the listener's client too
            self._subscriber = None
        else:
            await self._listener.aclose()

    # ---- claims ---------------------------------------------------------------------

    async def claim(self, channel: str) -> None:
        """This process generates ``channel`` from now on."""
        await self._call(self._batch.run("HSET", self._owners, channel, self.id))

    async def release(self, channel: str) -> None:
        await self._call(self._batch.run("HDEL", self._owners, channel))

    async def owned_elsewhere(self) -> set[str]:
        """The channels claimed by other processes whose lease is alive."""
        owners: dict[bytes, bytes] = await self._call(self._redis.hgetall(self._owners))
        peers = sorted({peer for peer in owners.values() if peer.decode() != self.id})
        if not peers:
            return set()
        async with self._redis.pipeline(transaction=False) as pipe:
            for peer in peers:
                pipe.exists(self._lease_prefix + peer.decode())
            alive: dict[bytes, int] = dict(zip(peers, await self._call(pipe.execute()), strict=True))
        return {channel.decode() for channel, peer in owners.items() if alive.get(peer)}

    async def cancel_elsewhere(self, channel: str) -> bool:
        """Ask the live process generating ``channel`` to cancel it; False when there is none."""
        owner: bytes | None = await self._call(self._redis.hget(self._owners, channel))
        if owner is None or owner.decode() == self.id:
            return False
        if not await self._call(self._redis.exists(self._lease_prefix + owner.decode())):
            return False
        heard = await self._call(self._redis.publish(f"{self._lease_prefix}{owner.decode()}:cancel", channel))
        return bool(heard)

    async def agreed_value(self, name: str, make: Callable[[], bytes]) -> bytes:
        """The value every process uses for ``name``: the first one stored wins (``make`` gives
        this process's candidate), kept in Redis like the rest of the service's data."""
        key = f"{self._prefix}:shared:{name}"
        await self._call(self._redis.set(key, make(), nx=True))
        value: bytes | None = await self._call(self._redis.get(key))
        if value is None:
            raise StoreUnavailable(f"Redis lost {key} as it was written")
        return value

    # ---- presence (``channels.presence.Board``) ------------------------------------------

    def _presence(self, channel: str) -> str:
        return f"{self._prefix}:ch:{{{channel}}}:presence"

    async def post_presence(self, counts: dict[str, tuple[int, int]]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for channel, (attached, visible) in counts.items():
                key = self._presence(channel)
                if attached:
                    pipe.hset(key, self.id, f"{attached} {visible}")
                    pipe.expire(key, PRESENCE_TTL_S)
                else:
                    pipe.hdel(key, self.id)
            await self._call(pipe.execute())

    async def visible_elsewhere(self, channel: str) -> bool:
        # A dead process's readers went with it: only live processes' counts are read.
        args = [self._prefix, self.id, self._presence(channel)]
        return bool(await self._call(self._batch.run_script(VISIBLE_ELSEWHERE, args)))

    async def post_report(self, channel: str, visible: bool) -> None:
        await self._call(self._redis.publish(self._reports, f"{self.id} {int(visible)} {channel}"))

    # ---- limits (``channels.limits.Counters``) -------------------------------------------

    async def reserve(self, user_id: str, max_running: int, max_total: int | None,
                      per_minute: int) -> tuple[str, int] | None:
        args: list[str | int] = [self._prefix, self.id, user_id, max_running,
                                 -1 if max_total is None else max_total, per_minute, secrets.token_hex(8)]
        which, retry_after_s = await self._call(self._batch.run_script(RESERVE, args))
        return None if not which else (_REFUSED[int(which)], int(retry_after_s))

    async def unreserve(self, user_id: str) -> None:
        args = [self._prefix, self.id, user_id]
        await self._call(self._batch.run_script(UNRESERVE, args))

    async def count_new_user(self, address: str, per_minute: int) -> int:
        return int(await self._call(self._new_user(args=[self._prefix, address, per_minute,
                                                         secrets.token_hex(8)])))

    # ---- the lease and the cancels ----------------------------------------------------

    async def _renew(self) -> None:
        await self._call(self._redis.set(self._lease, b"1", px=self.ttl_ms))

    async def _keep_lease(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            try:
                await self._renew()
            except StoreUnavailable:
                log.warning("could not renew this process's lease in Redis; its answers may be "
                            "ended as lost by another process if this lasts", exc_info=True)

    def _on_live(self, name: bytes) -> None:
        """A subscription is confirmed (again, after a reconnect: what was published meanwhile is
        gone; a cancel's sender saw it heard by nobody only if Redis noticed the drop first)."""
        subscribed = self._subscribed.get(name)
        if subscribed is not None and not subscribed.done():
            subscribed.set_result(None)

    def _on_message(self, name: bytes, payload: bytes) -> None:
        try:
            self._heard(name.decode(), payload.decode())
        except Exception:
            log.exception("a message between processes could not be handled")

    def _heard(self, subject: str, body: str) -> None:
        if subject == self._cancels:
            self.on_cancel(body)
            return
        origin, visible, channel = body.split(" ", 2)
        if origin != self.id and self.on_report is not None:
            self.on_report(channel, visible == "1")

    async def _call(self, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis did not answer: {type(exc).__name__}") from exc
