"""The storage seams: every durable fact of Chime goes through an ``EventLog`` or ``Records``.

A backend (``channels.sqlite.SQLiteStore`` now) implements both as one ``Store``,
opened once; ``tests/channels/test_*_contract.py`` run the same suites against
each. For every call of either seam: no call waits without end. One that cannot
be served in time (the database locked by another process, a restarting writer,
a failover) raises ``StoreUnavailable`` within seconds, and a write refused that
way never lands later.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from channels.events import Event

CommitListener = Callable[[Sequence[Event]], None]
# Told the channels whose write failed: their readers must catch up with what the store holds.
FailureListener = Callable[[Iterable[str]], None]


class ChannelClosed(Exception):
    """The channel already has its terminal event."""


class UnknownChannel(Exception):
    """No channel with that id exists."""


class StoreUnavailable(Exception):
    """The store cannot serve this call now (locked, restarting, too slow); try again shortly."""

    def __init__(self, message: str = "the store is unavailable", retry_after_s: int = 2):
        super().__init__(message)
        self.retry_after_s = retry_after_s


def utc_now() -> str:
    """An ISO 8601 UTC timestamp with milliseconds, e.g. ``2026-01-02T03:04:05.678Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ChannelRecord:
    id: str
    user_id: str
    conversation_id: str
    model: str
    status: str
    created_at: str
    finished_at: str | None
    usage: dict[str, Any] | None
    last_event_id: int

    @property
    def running(self) -> bool:
        return self.status == "running"


@dataclass(frozen=True)
class ConversationRecord:
    id: str
    user_id: str
    title: str
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class MessageRecord:
    role: str
    content: str
    channel: str | None
    status: str
    created_at: str


@dataclass(frozen=True)
class NewAnswer:
    """Everything one submission creates, written by ``Records.create_answer`` in one transaction.

    ``new_user`` is ``(user_id, token_hash)`` when the submission makes its user;
    ``new_title`` is set when it starts the conversation ``conversation_id``.
    """

    channel_id: str
    user_id: str
    conversation_id: str
    model: str
    message: str
    new_user: tuple[str, str] | None = None
    new_title: str | None = None


@dataclass(frozen=True)
class PushSubscription:
    user_id: str
    endpoint: str
    p256dh: str
    auth: str
    created_at: str



class EventLog(Protocol):
    """The append-only log of every channel: ids, durability, the one terminal event.

    Contract, for every implementation (``tests/channels/test_log_contract.py``):

    - A channel's events have ids 1..n with no gaps, whatever the concurrency of
      appends; the ``meta`` event is id 1, written in the same transaction as the
      channel by ``create_channel`` or ``Records.create_answer``: no channel exists
      without it.
    - ``append`` returns only once the event is durable (committed). Only then may
      readers be told of it: the log calls its ``on_commit`` callback with each
      committed batch, after the commit and never before.
      ``append(..., wait=False)`` (never for a terminal event) may return once the
      event is queued with its id taken, so a fast model is not held to one commit
      a token; it is still committed in order before any reader hears of it. If
      that commit fails, the channel's queued events are dropped (ids stay gapless)
      and the channel's next ``append`` raises the failure. A log may always wait.
      ``append_nowait`` is the same as a plain call, for a caller that runs in a
      callback (a model's bytes as they arrive): the queued event, or None when
      it cannot be queued without waiting (then ``append`` is the way).
    - A commit whose outcome the log cannot know at once (its writer died with it,
      a connection dropped) is not a failure: the log finds out what was stored,
      tells ``on_commit`` of that as committed and commits the rest again under the
      same ids, so each event is stored once and told once, in id order, and no
      ``append`` raises. Only a commit that failed for a known reason (a constraint,
      a full disk, a lock held too long), or whose outcome cannot be found out after
      a few tries, fails as above.
    - A channel ends with exactly one terminal event, its last: appending it is how
      a channel is finished, and appending after it raises ``ChannelClosed``. The
      terminal event's commit also sets the channel's status and ``finished_at``
      and stores the joined answer as the conversation's assistant message. The
      log keeps nothing in memory that grows with an answer's length: the joined
      answer comes from the stored deltas.
    - ``read_after(channel, after)`` returns committed events with ``id > after``
      in id order.
    """

    on_commit: CommitListener | None
    on_failure: FailureListener | None  # called with the channels of a batch that did not commit
    commits: int           # transactions that appended events, since open (group commit: far fewer than events)
    committed_events: int  # events those transactions appended

    async def create_channel(self, channel_id: str, user_id: str, conversation_id: str, model: str) -> Event:
        """Create a running channel and append its ``meta`` event (id 1)."""
        ...
    async def append(self, channel_id: str, type: str, data: dict[str, Any], *, wait: bool = True) -> Event: ...
    def append_nowait(self, channel_id: str, type: str, data: dict[str, Any]) -> Event | None: ...
    async def read_after(self, channel_id: str, after: int, limit: int = 1000) -> list[Event]: ...
    async def get_channel(self, channel_id: str) -> ChannelRecord | None:
        """The channel's record, its last event id included; None when there is no such channel."""
        ...
    async def channel_content(self, channel_id: str) -> str:
        """Every committed delta of the channel so far, joined."""
        ...
    async def running_channels(self) -> list[str]:
        """The channels without their terminal event yet."""
        ...
    async def watch(self, channel_id: str) -> None:
        """Tell ``on_commit`` of the channel's commits made by other processes too, until ``unwatch``.

        Returns once that holds: every event committed from then on reaches
        ``on_commit`` once, in id order (this store's own commits are told as
        always); those committed before are the caller's to read. So a reader
        watches first, then reads after its resume point, then merges by id.
        Reference-counted: each ``watch`` is undone by one ``unwatch``. A backend
        that one process owns alone has nothing to watch and returns at once.
        """
        ...
    def unwatch(self, channel_id: str) -> None:
        """Undo one ``watch`` of the channel."""
        ...


class Records(Protocol):
    """Users, conversations with their messages, and push subscriptions.

    Contract, for every implementation (``tests/channels/test_records_contract.py``):
    a write is durable when its call returns; what a call changes together lands
    together or not at all.
    """

    # Users
    async def create_user(self, user_id: str, token_hash: str) -> None: ...
    async def user_for_token_hash(self, token_hash: str) -> str | None: ...

    # Conversations and their messages
    async def create_conversation(self, conversation_id: str, user_id: str, title: str) -> ConversationRecord: ...
    async def get_conversation(self, conversation_id: str) -> ConversationRecord | None: ...
    async def list_conversations(self, user_id: str) -> list[ConversationRecord]: ...
    async def delete_conversation(self, conversation_id: str) -> list[str]:
        """Delete a conversation with its messages, channels and events; returns the channel ids.
        An append to one of them from then on raises ``UnknownChannel`` or ``ChannelClosed``."""
        ...
    async def add_turn(self, conversation_id: str, user_message: str, channel_id: str) -> None:
        """Record the user's message and a running assistant message tied to ``channel_id``;
        moves the conversation to the top of its owner's list."""
        ...
    async def messages(self, conversation_id: str) -> list[MessageRecord]: ...
    async def create_answer(self, answer: NewAnswer) -> Event:
        """All of a submission in one transaction: the user and conversation when new, the
        running channel with its ``meta`` event (id 1, the log's ``create_channel``), and the
        turn. Nothing of it exists if this raises; returns the ``meta`` event, told to the
        log's ``on_commit`` like any commit."""
        ...

    # Push subscriptions
    async def save_subscription(self, user_id: str, endpoint: str, p256dh: str, auth: str) -> None:
        """Store a subscription; the same endpoint again replaces the old one (whoever owned it)."""
        ...
    async def delete_subscription(self, endpoint: str, user_id: str | None = None) -> bool: ...
    async def subscriptions_for(self, user_id: str) -> list[PushSubscription]: ...


class Store(EventLog, Records, Protocol):
    """One backend: both seams over the same storage, opened and closed once."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def writable(self) -> bool:
        """Whether a write could be made now, answered within seconds; cheap enough for a
        flood of health checks (the answer may be a second or two old)."""
        ...
