"""The Redis backend: both storage seams in one Redis, shared by any number of processes.

``keys``     every key name, under the store's prefix
``scripts``  the Lua scripts that make every write one atomic, idempotent step with a deadline
``database`` the client both seams share: timeouts, running scripts, the clock, health
``log``      ``EventLog``: channels, the group commit of their events, reads of them
``watch``    other processes' commits: one pub/sub connection, the watched channels
``records``  ``Records``: users, conversations and messages, push subscriptions

Where this differs from the first design, and why:

- **One append script per round, not per channel.** Each command of a pipeline
  cost the process a reply to read through redis-py (~10 us) and Redis a script
  call (~2 us); with a thousand streams that was a fifth of the process's CPU.
  The script still checks and stores each channel's batch on its own, so one
  refused channel fails only its batch. Packed by hiredis: redis-py packed every
  argument in Python, half of a round's CPU.
- **The answer is joined as it is appended**, into ``...:text`` (``APPEND`` of the
  batch's delta contents), not at the terminal event: the terminal step costs no
  more than any other (joining 50,000 deltas at once would hold Redis for tens of
  milliseconds), and ``channel_content`` is one ``GET`` at any time.
- **A channel's last id is its stream's length**, not a field of its hash: ids
  run 1..n and no entry is removed, so ``XLEN`` is the last id. A round of deltas
  then writes the stream and the text only; the hash's ``last`` was a third of
  the append-only file's bytes per token (channels stored by an earlier version
  keep that field, unread).
- **Every write script has a deadline** on Redis's clock, so a write this
  process gave up on (``StoreUnavailable``) cannot land later, and every write
  script is idempotent, so an unknown outcome is settled by sending it again.
- **A sweeper's terminal event takes the next free id** when the owner's last
  events landed first (``CONFLICT``): its event is awaited, so its id was known
  to nobody yet. An event whose id was already returned is never renumbered.
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
