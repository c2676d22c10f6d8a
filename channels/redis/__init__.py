"""The Redis backend: both storage seams in one Redis, shared by any number of processes.

``keys``     every key name, under the store's prefix
``scripts``  the Lua scripts that make every write one atomic, idempotent step with a deadline
``database`` the client both seams share: timeouts, running scripts, the clock, health
``log``      ``EventLog``: channels, the group commit of their events, reads of them
``watch``    other processes' commits: one pub/sub connection, the watched channels
``records``  ``Records``: users, conversations and messages, push subscriptions
"""

from __future__ import annotations

from channels.events import Event
from channels.redis import records
from channels.redis.log import RedisLog
from channels.redis.records import RedisRecords
from channels.redis.scripts import DELETE_CONVERSATION
from channels.store import NewAnswer, utc_now

__all__ = ["RedisStore"]


class RedisStore(RedisLog, RedisRecords):
    """``Store`` in Redis: ``RedisStore(url, prefix="chime")``, opened once for both seams.

    The two calls that span the seams are here, each one script: a submission's
    records ride in the script that creates its channel, and a conversation goes
    with its channels and their events.
    """

    async def create_answer(self, answer: NewAnswer) -> Event:
        now = utc_now()
        return await self._create(answer.channel_id, answer.user_id, answer.conversation_id, answer.model, now,
                                  records.submission(answer, now))

    async def delete_conversation(self, conversation_id: str) -> list[str]:
        members: set[bytes] = await self._read(lambda r: r.smembers(self.keys.channels_of(conversation_id)))
        channels = {member.decode() for member in members}
        await self._flush_channels(channels)
        replies: list[bytes] = await self._script(DELETE_CONVERSATION, {"conversation": conversation_id})
        deleted = [member.decode() for member in replies]
        self._forget([*channels, *deleted])
        return deleted
