"""The answers service: what every front door calls to start an answer.

A submission is one step that a client hanging up cannot cut: the limits are
checked and a slot reserved, then one store transaction creates everything
(the user and conversation when new, the channel with ``meta`` at id 1, the
turn), then the generation starts. That work runs in a task of its own that
the request only waits for, so a cancelled request leaves either nothing or a
complete answer running to its terminal event.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from channels.generation import Generations
from channels.hub import Hub
from channels.limits import Limits
from channels.store import ChannelRecord, ConversationRecord, MessageRecord, NewAnswer, Store
from llm.base import NO_OPTIONS, ModelOptions
from llm.context import build_messages
from settings import Settings

MAX_TITLE_CHARS = 80


def new_id() -> str:
    """An opaque, URL-safe id with 128 random bits."""
    return secrets.token_urlsafe(16)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def title_for(message: str) -> str:
    """Whitespace collapsed; longer than 80 characters, cut so that with the ``…`` it is 80."""
    title = " ".join(message.split())
    if len(title) > MAX_TITLE_CHARS:
        title = title[:MAX_TITLE_CHARS - 1] + "…"
    return title


# A conversation id that depends on the user, for front doors whose clients name their
# conversations themselves (the AI SDK's chat ids): known only once the user is.
ConversationFor = Callable[[str], str]


class UnknownConversation(Exception):
    """The conversation does not exist, or is not the submitting user's."""


class UnknownAnswer(Exception):
    """The channel does not exist, or is not the user's."""


@dataclass(frozen=True, slots=True)
class ReadPoint:
    """Where an answer stands for a reader about to attach."""

    running: bool
    last_event_id: int


@dataclass(frozen=True)
class Submitted:
    channel: str
    conversation_id: str
    token: str | None  # the new user's token, when the submission made one


class Answers:
    def __init__(self, store: Store, generations: Generations, limits: Limits, settings: Settings,
                 hub: Hub | None = None, on_new_user: Callable[[str, str], None] | None = None):
        self.store = store
        self.generations = generations
        self.limits = limits
        self.settings = settings
        self.hub = hub
        # Told ``(user_id, token_hash)`` of each user a submission made, once it is stored.
        self.on_new_user = on_new_user
        self._starting: set[asyncio.Task[None]] = set()

    # ---- ownership: another user's things do not exist --------------------------------

    async def answer_of(self, user_id: str, channel_id: str) -> ChannelRecord:
        """The user's channel; ``UnknownAnswer`` for one that is missing or another's."""
        record = await self.store.get_channel(channel_id)
        if record is None or record.user_id != user_id:
            raise UnknownAnswer(channel_id)
        return record

    async def read_point(self, user_id: str, channel_id: str) -> ReadPoint:
        """Where the user's answer stands, for a reader; ``UnknownAnswer`` as ``answer_of``.

        While this process generates the answer, the hub's feed of it has been told of
        every commit (a submission holds the feed from before its ``meta`` until its
        generation ends), so its last id and whether it ended are known without reading
        the store: an arriving reader costs no read.
        """
        owner = self.generations.owner_of(channel_id)
        feed = self.hub.feed(channel_id) if self.hub is not None and owner is not None else None
        if feed is not None and feed.last_id is not None:
            if owner != user_id:
                raise UnknownAnswer(channel_id)
            return ReadPoint(not feed.closed, feed.last_id)
        record = await self.answer_of(user_id, channel_id)
        return ReadPoint(record.running, record.last_event_id)

    async def conversation_of(self, user_id: str, conversation_id: str) -> ConversationRecord:
        """The user's conversation; ``UnknownConversation`` for one that is missing or another's."""
        conversation = await self.store.get_conversation(conversation_id)
        if conversation is None or conversation.user_id != user_id:
            raise UnknownConversation(conversation_id)
        return conversation

    # ---- ending ---------------------------------------------------------------------

    async def cancel(self, channel_id: str, *, wait: bool = False) -> bool:
        """Cancel a running answer (it appends ``cancelled`` itself); False when it has ended or
        is appending its own ending. ``wait``: return once the ending is stored."""
        return await self.generations.stop(channel_id, wait=wait)

    async def delete_conversation(self, conversation_id: str) -> None:
        """Its running answers are cancelled (their endings stored), then it goes with its channels,
        and their readers are woken to see them gone."""
        for message in await self.store.messages(conversation_id):
            if message.role == "assistant" and message.status == "running" and message.channel:
                await self.generations.stop(message.channel, wait=True)
        for channel in await self.store.delete_conversation(conversation_id):
            if self.hub is not None:
                self.hub.forget(channel)

    async def submit(self, user_id: str | None, message: str, conversation_id: str | None, address: str, *,
                     create_as: str | ConversationFor | None = None,
                     context: list[dict[str, str]] | None = None, system_prompt: str | None = None,
                     options: ModelOptions = NO_OPTIONS, again: bool = False) -> Submitted:
        """Start an answer to ``message``, stored as the user's turn.

        ``conversation_id`` continues a conversation of the user's (its turns are the
        model's history); ``create_as`` continues that one if it exists and is the user's,
        else starts it under that id (given as a function of the user id, it is the id for
        that user: a new user's conversation is new). With neither, a new conversation
        starts. ``context`` is the model's whole input instead (no stored history, no system
        prompt); ``system_prompt`` replaces the server's. ``again`` answers the
        conversation's last question anew: the turns at its end that asked ``message`` are
        not the model's history (they stay stored). Raises ``UnknownConversation`` or
        ``LimitExceeded``.
        """
        history: list[MessageRecord] = []
        conversation_for: ConversationFor | None = None
        if callable(create_as):
            conversation_for, create_as = create_as, None
            if user_id is not None:
                create_as = conversation_for(user_id)
        existing = conversation_id if conversation_id is not None else create_as
        new_title: str | None = None
        if existing is not None:
            conversation = await self.store.get_conversation(existing)
            if conversation is None and create_as is not None:
                new_title = title_for(message)
            elif conversation is None or conversation.user_id != user_id:
                raise UnknownConversation(existing)
            elif context is None:
                history = await self.store.messages(existing)
                if again:
                    history = without_last_asking(history, message)
        else:
            new_title = title_for(message)
        token = new_user = None
        if user_id is None:
            await self.limits.new_user(address)
            user_id, token = new_id(), new_token()
            new_user = (user_id, hash_token(token))
            if conversation_for is not None:
                existing = conversation_for(user_id)
        answer = NewAnswer(channel_id=new_id(), user_id=user_id,
                           conversation_id=existing if existing is not None else new_id(),
                           model=self.settings.model_name, message=message, new_user=new_user,
                           new_title=new_title)
        settings = self.settings
        if context is None:
            prompt = settings.system_prompt if system_prompt is None else system_prompt
            context = build_messages(prompt, history, message, settings.history_budget_chars)
        task = asyncio.get_running_loop().create_task(self._create_and_start(answer, context, options),
                                                      name=f"chime-submit-{answer.channel_id}")
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)
        await asyncio.shield(task)
        return Submitted(answer.channel_id, answer.conversation_id, token)

    async def _create_and_start(self, answer: NewAnswer, messages: list[dict[str, str]],
                                options: ModelOptions) -> None:
        # The feed is held from before the channel exists until its generation ends: its tail
        # then has the answer from ``meta`` on, and its first readers read no store.
        hub = self.hub
        feed = hub.acquire(answer.channel_id) if hub is not None else None
        try:
            async with self.limits.admitted(answer.user_id) as slot:
                await self.store.create_answer(answer)
                generation = self.generations.start(answer.channel_id, answer.user_id, messages, options)
                slot.keep_until(generation)
        except BaseException:
            if hub is not None and feed is not None:
                hub.release(feed)
            raise
        if hub is not None and feed is not None:
            generation.add_done_callback(lambda _: hub.release(feed))
        if answer.new_user is not None and self.on_new_user is not None:
            self.on_new_user(*answer.new_user)

    async def settle(self) -> None:
        """Wait for submissions under way (on stop, before the generations are shut down)."""
        if self._starting:
            await asyncio.wait(list(self._starting))


def without_last_asking(history: list[MessageRecord], question: str) -> list[MessageRecord]:
    """``history`` less the turns at its end that asked ``question`` (with their answers)."""
    end = len(history)
    while end >= 2 and history[end - 2].role == "user" and history[end - 2].content == question:
        end -= 2
    return history[:end]
