"""The ``Records`` seam in SQLite: users, conversations and their messages, push subscriptions.

Each write is one transaction in the writer process (``Database._write``). What
spans both seams (a whole submission, deleting a conversation with its channels)
is composed in ``channels.sqlite.SQLiteStore`` from the statements made here and
in ``channels.sqlite.log``.
"""

from __future__ import annotations

from channels.sqlite.database import Database, Statement
from channels.store import ConversationRecord, MessageRecord, NewAnswer, PushSubscription, utc_now

SQL_INSERT_USER = "INSERT INTO users (id, token_hash, created_at) VALUES (?, ?, ?)"
SQL_USER_FOR_TOKEN_HASH = "SELECT id FROM users WHERE token_hash = ?"

# ``touched`` orders conversations updated within the same millisecond: the latest is first.
_NEXT_TOUCH = "(SELECT COALESCE(MAX(touched), 0) + 1 FROM conversations)"
SQL_INSERT_CONVERSATION = ("INSERT INTO conversations (id, user_id, title, created_at, updated_at, touched) "
                           f"VALUES (?, ?, ?, ?, ?, {_NEXT_TOUCH})")
SQL_TOUCH_CONVERSATION = f"UPDATE conversations SET updated_at = ?, touched = {_NEXT_TOUCH} WHERE id = ?"
SQL_CONVERSATION = "SELECT id, user_id, title, created_at, updated_at FROM conversations WHERE id = ?"
SQL_CONVERSATIONS_OF = ("SELECT id, user_id, title, created_at, updated_at FROM conversations "
                        "WHERE user_id = ? ORDER BY updated_at DESC, touched DESC")
SQL_DELETE_MESSAGES = "DELETE FROM messages WHERE conversation_id = ?"
SQL_DELETE_CONVERSATION = "DELETE FROM conversations WHERE id = ?"

SQL_INSERT_QUESTION = ("INSERT INTO messages (conversation_id, role, content, channel, status, created_at) "
                       "VALUES (?, 'user', ?, ?, 'done', ?)")
SQL_INSERT_ANSWER = ("INSERT INTO messages (conversation_id, role, content, channel, status, created_at) "
                     "VALUES (?, 'assistant', '', ?, 'running', ?)")
SQL_MESSAGES = ("SELECT role, content, channel, status, created_at FROM messages "
                "WHERE conversation_id = ? ORDER BY seq")

SQL_SAVE_SUBSCRIPTION = ("INSERT INTO push_subscriptions (endpoint, user_id, p256dh, auth, created_at) "
                         "VALUES (?, ?, ?, ?, ?) ON CONFLICT (endpoint) DO UPDATE SET "
                         "user_id = excluded.user_id, p256dh = excluded.p256dh, auth = excluded.auth, "
                         "created_at = excluded.created_at")
SQL_DELETE_SUBSCRIPTION = "DELETE FROM push_subscriptions WHERE endpoint = ?"
SQL_DELETE_OWN_SUBSCRIPTION = "DELETE FROM push_subscriptions WHERE endpoint = ? AND user_id = ?"
SQL_SUBSCRIPTIONS_OF = ("SELECT user_id, endpoint, p256dh, auth, created_at FROM push_subscriptions "
                        "WHERE user_id = ? ORDER BY created_at")


class SQLiteRecords(Database):
    """``Records`` in SQLite; each write one transaction in the writer process."""

    # ---- users -----------------------------------------------------------

    async def create_user(self, user_id: str, token_hash: str) -> None:
        await self._write((SQL_INSERT_USER, (user_id, token_hash, utc_now())))

    async def user_for_token_hash(self, token_hash: str) -> str | None:
        row = await self._fetchone(SQL_USER_FOR_TOKEN_HASH, (token_hash,))
        return row[0] if row else None

    # ---- conversations ---------------------------------------------------

    async def create_conversation(self, conversation_id: str, user_id: str, title: str) -> ConversationRecord:
        now = utc_now()
        await self._write((SQL_INSERT_CONVERSATION, (conversation_id, user_id, title, now, now)))
        return ConversationRecord(conversation_id, user_id, title, now, now)

    async def get_conversation(self, conversation_id: str) -> ConversationRecord | None:
        row = await self._fetchone(SQL_CONVERSATION, (conversation_id,))
        return ConversationRecord(*row) if row else None

    async def list_conversations(self, user_id: str) -> list[ConversationRecord]:
        return [ConversationRecord(*row) for row in await self._fetchall(SQL_CONVERSATIONS_OF, (user_id,))]

    async def add_turn(self, conversation_id: str, user_message: str, channel_id: str) -> None:
        await self._write(*turn(conversation_id, user_message, channel_id, utc_now()))

    async def messages(self, conversation_id: str) -> list[MessageRecord]:
        return [MessageRecord(*row) for row in await self._fetchall(SQL_MESSAGES, (conversation_id,))]

    # ---- push subscriptions ---------------------------------------------

    async def save_subscription(self, user_id: str, endpoint: str, p256dh: str, auth: str) -> None:
        await self._write((SQL_SAVE_SUBSCRIPTION, (endpoint, user_id, p256dh, auth, utc_now())), idempotent=True)

    async def delete_subscription(self, endpoint: str, user_id: str | None = None) -> bool:
        if user_id is None:
            statement: Statement = (SQL_DELETE_SUBSCRIPTION, (endpoint,))
        else:
            statement = (SQL_DELETE_OWN_SUBSCRIPTION, (endpoint, user_id))
        return await self._write(statement) > 0

    async def subscriptions_for(self, user_id: str) -> list[PushSubscription]:
        return [PushSubscription(*row) for row in await self._fetchall(SQL_SUBSCRIPTIONS_OF, (user_id,))]


def turn(conversation_id: str, question: str, channel_id: str, now: str) -> list[Statement]:
    """The user's message, the running answer's, and the conversation moved to the top of its list."""
    return [(SQL_INSERT_QUESTION, (conversation_id, question, channel_id, now)),
            (SQL_INSERT_ANSWER, (conversation_id, channel_id, now)),
            (SQL_TOUCH_CONVERSATION, (now, conversation_id))]


def submission(answer: NewAnswer, now: str) -> list[Statement]:
    """The records one submission writes: its user and conversation when new, and the turn."""
    statements: list[Statement] = []
    if answer.new_user is not None:
        statements.append((SQL_INSERT_USER, (*answer.new_user, now)))
    if answer.new_title is not None:
        statements.append((SQL_INSERT_CONVERSATION, (answer.conversation_id, answer.user_id, answer.new_title,
                                                     now, now)))
    return statements + turn(answer.conversation_id, answer.message, answer.channel_id, now)


def conversation_deletion(conversation_id: str) -> list[Statement]:
    """The conversation and its messages; its channels must be deleted before, in the same transaction."""
    return [(SQL_DELETE_MESSAGES, (conversation_id,)), (SQL_DELETE_CONVERSATION, (conversation_id,))]
