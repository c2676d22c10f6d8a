"""The SQLite backend: both storage seams over one database file.

``schema``   the tables (numbered migrations), connection settings, file modes
``writer``   the writer process that runs every write transaction, and its client
``database`` the connections both seams share, write deadlines, WAL checkpoints
``log``      ``EventLog``: channels, the group commit of their events, reads of them
``records``  ``Records``: users, conversations and messages, push subscriptions
"""

from __future__ import annotations

from channels.events import Event
from channels.sqlite import records
from channels.sqlite.log import SQLiteLog, channel_deletion
from channels.sqlite.records import SQLiteRecords
from channels.store import NewAnswer, utc_now

__all__ = ["SQLiteStore"]


class SQLiteStore(SQLiteLog, SQLiteRecords):
    """``Store`` in SQLite: one writer process, one reader connection, opened once for both seams.

    The two calls that span the seams are here, each one transaction: a submission's
    records ride in the transaction that creates its channel, and a conversation goes
    with its channels and their events.
    """

    async def create_answer(self, answer: NewAnswer) -> Event:
        now = utc_now()
        return await self._create(answer.channel_id, answer.user_id, answer.conversation_id, answer.model, now,
                                  alongside=records.submission(answer, now))

    async def delete_conversation(self, conversation_id: str) -> list[str]:
        channels = await self._channels_of(conversation_id)
        await self._flush_channels(set(channels))
        await self._write_transaction(channel_deletion(conversation_id, channels)
                                      + records.conversation_deletion(conversation_id), idempotent=True)
        self._forget(channels)
        return channels
