"""The ``Records`` seam in Redis: users, conversations and their messages, push subscriptions.

Each write is one script (``channels.redis.scripts``); each read one command, or one
pipelined round trip. A conversation's messages are a list of JSON objects; the
assistant's names its channel and takes its status and content from the channel
when read (the channel's hash and joined text), so ending a channel touches no
conversation key. Conversations are listed newest first by ``updated_at``, then by
the order they were touched in, as SQLite lists them.
"""

from __future__ import annotations

import orjson

from channels.redis.database import RedisDatabase
from channels.redis.scripts import (
    ADD_TURN,
    CREATE_CONVERSATION,
    CREATE_USER,
    DELETE_SUBSCRIPTION,
    SAVE_SUBSCRIPTION,
)
from channels.store import ConversationRecord, MessageRecord, NewAnswer, PushSubscription, utc_now

_CONVERSATION_FIELDS = ("id", "user_id", "title", "created_at", "updated_at")
_SUBSCRIPTION_FIELDS = ("user_id", "endpoint", "p256dh", "auth", "created_at")


class RedisRecords(RedisDatabase):
    """``Records`` in Redis; each write one script."""

    # ---- users -----------------------------------------------------------

    async def create_user(self, user_id: str, token_hash: str) -> None:
        await self._script(CREATE_USER, {"user": user_id, "token_hash": token_hash, "now": utc_now()})

    async def user_for_token_hash(self, token_hash: str) -> str | None:
        user: bytes | None = await self._read(lambda r: r.get(self.keys.token(token_hash)))
        return user.decode() if user is not None else None

    # ---- conversations ---------------------------------------------------

    async def create_conversation(self, conversation_id: str, user_id: str, title: str) -> ConversationRecord:
        now = utc_now()
        await self._script(CREATE_CONVERSATION, {"id": conversation_id, "user": user_id, "title": title, "now": now})
        return ConversationRecord(conversation_id, user_id, title, now, now)

    async def get_conversation(self, conversation_id: str) -> ConversationRecord | None:
        fields: list[bytes | None] = await self._read(
            lambda r: r.hmget(self.keys.conversation(conversation_id), *_CONVERSATION_FIELDS))
        return ConversationRecord(*_texts(fields)) if fields[0] is not None else None

    async def list_conversations(self, user_id: str) -> list[ConversationRecord]:
        ids: list[bytes] = await self._read(lambda r: r.zrange(self.keys.conversations_of(user_id), 0, -1,
                                                               desc=True))
        rows = await self._pipelined(lambda pipe: [
            pipe.hmget(self.keys.conversation(id_.decode()), *_CONVERSATION_FIELDS, "touched") for id_ in ids])
        found = [row for row in rows if row[0] is not None]
        found.sort(key=lambda row: (row[4], int(row[5])), reverse=True)  # updated_at, then touched
        return [ConversationRecord(*_texts(row[:5])) for row in found]

    async def add_turn(self, conversation_id: str, user_message: str, channel_id: str) -> None:
        now = utc_now()
        await self._script(ADD_TURN, {"conversation": conversation_id, "channel": channel_id, "now": now,
                                      **turn(user_message, channel_id, now)})

    async def messages(self, conversation_id: str) -> list[MessageRecord]:
        entries: list[bytes] = await self._read(lambda r: r.lrange(self.keys.messages(conversation_id), 0, -1))
        stored = [orjson.loads(entry) for entry in entries]
        answers = [message["channel"] for message in stored if message["role"] == "assistant"]
        replies = await self._pipelined(lambda pipe: [
            (pipe.hget(self.keys.channel(channel), "status"), pipe.get(self.keys.text(channel)))
            for channel in answers]) if answers else []
        ended = {channel: (status.decode(), text.decode() if text else "")
                 for channel, status, text in zip(answers, replies[::2], replies[1::2], strict=True)
                 if status is not None}
        records = []
        for message in stored:
            if message["role"] == "assistant":
                status, content = ended.get(message["channel"], ("running", ""))
                if status == "running":
                    content = ""  # the answer is stored as the conversation's once its channel ends
                records.append(MessageRecord("assistant", content, message["channel"], status, message["created_at"]))
            else:
                records.append(MessageRecord(message["role"], message["content"], message["channel"], "done",
                                             message["created_at"]))
        return records

    # ---- push subscriptions ---------------------------------------------

    async def save_subscription(self, user_id: str, endpoint: str, p256dh: str, auth: str) -> None:
        await self._script(SAVE_SUBSCRIPTION, {"user": user_id, "endpoint": endpoint, "p256dh": p256dh,
                                               "auth": auth, "now": utc_now()})

    async def delete_subscription(self, endpoint: str, user_id: str | None = None) -> bool:
        """Whether one was deleted. A call whose first reply was lost and that ran again finds
        nothing left and answers False."""
        payload = {"endpoint": endpoint} if user_id is None else {"endpoint": endpoint, "user": user_id}
        return bool(await self._script(DELETE_SUBSCRIPTION, payload))

    async def subscriptions_for(self, user_id: str) -> list[PushSubscription]:
        endpoints: set[bytes] = await self._read(lambda r: r.smembers(self.keys.subscriptions_of(user_id)))
        rows = await self._pipelined(lambda pipe: [
            pipe.hmget(self.keys.subscription(endpoint.decode()), *_SUBSCRIPTION_FIELDS) for endpoint in endpoints])
        found = sorted((row for row in rows if row[0] is not None), key=lambda row: (row[4], row[1]))
        return [PushSubscription(*_texts(row)) for row in found]


def _texts(fields: list[bytes | None]) -> list[str]:
    """The fields of a record that has them all."""
    return [field.decode() if field is not None else "" for field in fields]


def turn(question: str, channel_id: str, now: str) -> dict[str, str]:
    """The two messages of a turn, as the scripts store them: the user's, and the answer's."""
    return {"question": orjson.dumps({"role": "user", "content": question, "channel": channel_id,
                                      "created_at": now}).decode(),
            "answer": orjson.dumps({"role": "assistant", "channel": channel_id, "created_at": now}).decode()}


def submission(answer: NewAnswer, now: str) -> dict[str, str]:
    """What a submission adds to its channel's creation: its user and conversation when new, the turn."""
    records = turn(answer.message, answer.channel_id, now)
    if answer.new_user is not None:
        records["token_hash"] = answer.new_user[1]
    if answer.new_title is not None:
        records["title"] = answer.new_title
    return records
