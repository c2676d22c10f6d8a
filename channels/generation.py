"""Generations: the background work that turns a model's stream into a channel's events.

Each generation is a named task owned by ``Generations``. Whatever happens —
the model finishes, fails, stalls, is cancelled, or the server stops — it ends
with exactly one terminal event. ``finish`` is the only way a terminal event
is appended, so presence is decided the same way for every ending.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from channels.events import CANCELLED, DELTA, DONE, ERROR, INTERRUPTED, USAGE
from channels.presence import Presence
from channels.store import ChannelClosed, Store, UnknownChannel
from llm.base import NO_OPTIONS, Chunk, ModelError, ModelOptions, Provider

log = logging.getLogger("chime.generation")

SHUTDOWN_REASON = "server_shutdown"
RESTART_REASON = "server_restart"
LOST_REASON = "server_lost"  # running in the store with no generation left to end it
# How often the store is checked for running channels that no generation owns.
SWEEP_INTERVAL_S = 10.0
# A terminal event that could not be appended (a locked database, a restarted writer) is
# tried again with these delays, doubling, for about a minute in all: an answer must end.
TERMINAL_RETRY_FIRST_S = 0.05
TERMINAL_RETRY_MAX_S = 5.0
TERMINAL_RETRY_TOTAL_S = 60.0
# At most this many answers of one process go through their ending at once: from the model's
# finish reason to the terminal event's commit, and with that their readers' endings. An end
# costs several tokens' work (the last events, the terminal commit and its fan-out, the model
# stream's close, the readers' responses ended). When a thousand answers finish within one
# token period, those endings all at once held up the last tokens of the rest by 50-90 ms;
# taking turns keeps the answers still streaming on pace. Enough end together to share their
# group commits and round trips (fewer at once cost more CPU per ending), and the burst's
# endings are no slower for it. An answer ending alone never waits.
ENDINGS_AT_ONCE = 32


class AnswerLimit(Exception):
    """The answer passed a limit of the server's; it ends with ``error`` ``code``."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Completion:
    """A channel reached its terminal event; ``watched`` was decided as it was appended."""

    channel: str
    user_id: str
    status: str
    data: dict[str, Any]
    watched: bool


CompletionHook = Callable[[Completion], Awaitable[None] | None]


class Peers(Protocol):
    """The other processes on the same store (``channels.peers``): who runs which answer."""

    async def claim(self, channel: str) -> None: ...
    async def release(self, channel: str) -> None: ...
    async def owned_elsewhere(self) -> set[str]: ...
    async def cancel_elsewhere(self, channel: str) -> bool: ...


class Generations:
    def __init__(self, store: Store, provider: Provider, presence: Presence, *,
                 max_answer_chars: int | None = None, max_answer_s: float | None = None,
                 peers: Peers | None = None, endings_at_once: int = ENDINGS_AT_ONCE):
        self.store = store
        self.provider = provider
        self.presence = presence
        # Other processes on the same store: their answers are theirs to end, and a cancel
        # of one goes to them. Without peers, every running channel is this process's.
        self.peers = peers
        self.max_answer_chars = max_answer_chars
        self.max_answer_s = max_answer_s
        self.completion_hooks: list[CompletionHook] = []
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._owners: dict[str, str] = {}
        self._stop_reasons: dict[str, str] = {}
        # Channels whose generation is appending its terminal event: a cancel now would be a
        # second ending, so it is refused (the answer has finished).
        self._finishing: set[str] = set()
        self._abandoned: set[str] = set()  # seen running with no generation by the last sweep
        self._endings = asyncio.Semaphore(endings_at_once)  # see ENDINGS_AT_ONCE
        self.waiting_to_end = 0  # answers whose model has finished, waiting for their turn to end

    # ---- starting and stopping -------------------------------------------

    def start(self, channel: str, user_id: str, messages: list[dict[str, str]],
              options: ModelOptions = NO_OPTIONS) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(
            self._run(channel, user_id, messages, options), name=f"chime-generation-{channel}")
        self._tasks[channel] = task
        self._owners[channel] = user_id
        task.add_done_callback(lambda _: self._forget(channel))
        return task

    def _forget(self, channel: str) -> None:
        self._tasks.pop(channel, None)
        self._owners.pop(channel, None)
        self._stop_reasons.pop(channel, None)
        self._finishing.discard(channel)

    def is_running(self, channel: str) -> bool:
        return channel in self._tasks

    def owner_of(self, channel: str) -> str | None:
        """The user whose answer this process is generating on ``channel``; None when it is none."""
        return self._owners.get(channel)

    def running_for(self, user_id: str) -> int:
        return sum(1 for owner in self._owners.values() if owner == user_id)

    @property
    def running(self) -> int:
        return len(self._tasks)

    def cancel(self, channel: str, reason: str = CANCELLED) -> bool:
        """Ask a running generation to stop; it appends its terminal event itself.

        False when there is none, or it is already appending its terminal event:
        exactly one ending wins, and it is that one. Asking twice is not cancelling twice.
        """
        task = self._tasks.get(channel)
        if task is None or task.done() or channel in self._finishing:
            return False
        if channel not in self._stop_reasons:
            self._stop_reasons[channel] = reason
            task.cancel()
        return True

    async def stop(self, channel: str, *, wait: bool = False) -> bool:
        """Cancel a channel's answer; True when it was running and now ends as cancelled.

        A channel marked running with no task here (its generation is gone) is
        ended directly, so that no reader waits on it forever.
        """
        task = self._tasks.get(channel)
        if self.cancel(channel):
            if wait and task is not None:
                await asyncio.wait([task])
            return True
        if task is None and self.peers is not None and await self.peers.cancel_elsewhere(channel):
            if wait:
                await self._ended_elsewhere(channel)
            return True
        record = await self.store.get_channel(channel)
        if record is None or not record.running or task is not None:
            return False
        return await self.finish(channel, record.user_id, CANCELLED, {})

    async def _ended_elsewhere(self, channel: str, timeout_s: float = 10.0) -> None:
        """Wait (bounded) until another process's answer on ``channel`` has its terminal event."""
        async with asyncio.timeout(timeout_s):
            while True:
                record = await self.store.get_channel(channel)
                if record is None or not record.running:
                    return
                await asyncio.sleep(0.05)

    async def interrupt_orphans(self) -> int:
        """On start: end every channel a previous process left running as interrupted.

        With peers, running channels may be theirs: the sweep ends those nobody owns."""
        if self.peers is not None:
            return 0
        ended = 0
        for channel in await self.store.running_channels():
            if channel not in self._tasks and await self._end_without_generation(channel, RESTART_REASON):
                ended += 1
        return ended

    async def end_abandoned(self) -> int:
        """End the channels the store has running with no generation here, at their second sighting.

        A channel seen once may be a submission between its commit and its generation's
        start; seen again a sweep later, nothing is going to end it but this.
        """
        elsewhere = await self.peers.owned_elsewhere() if self.peers is not None else set()
        abandoned = {channel for channel in await self.store.running_channels()
                     if channel not in self._tasks and channel not in elsewhere}
        confirmed, self._abandoned = abandoned & self._abandoned, abandoned
        ended = 0
        for channel in confirmed:
            if channel not in self._tasks and await self._end_without_generation(channel, LOST_REASON):
                self._abandoned.discard(channel)
                ended += 1
        return ended

    async def sweep(self, interval_s: float = SWEEP_INTERVAL_S) -> None:
        """``end_abandoned`` every ``interval_s``, until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                ended = await self.end_abandoned()
            except Exception:
                log.warning("sweeping for abandoned answers failed; trying again later", exc_info=True)
                continue
            if ended:
                log.warning("ended %d answers that no generation was running as interrupted", ended)

    async def _end_without_generation(self, channel: str, reason: str) -> bool:
        record = await self.store.get_channel(channel)
        return (record is not None and record.running
                and await self.finish(channel, record.user_id, INTERRUPTED, {"reason": reason}))

    async def shutdown(self, grace_s: float) -> None:
        """Give running answers ``grace_s`` to finish, then end the rest as interrupted."""
        tasks = list(self._tasks.values())
        if tasks and grace_s > 0:
            log.info("waiting up to %.1fs for %d running answers", grace_s, len(tasks))
            await asyncio.wait(tasks, timeout=grace_s)
        for channel in list(self._tasks):
            self.cancel(channel, INTERRUPTED)
        remaining = list(self._tasks.values())
        if remaining:
            await asyncio.wait(remaining)

    # ---- the work --------------------------------------------------------

    async def _run(self, channel: str, user_id: str, messages: list[dict[str, str]],
                   options: ModelOptions) -> None:
        if self.peers is None:
            await self._generate(channel, user_id, messages, options)
            return
        try:
            await self.peers.claim(channel)
        except Exception:
            log.warning("could not claim %s for this process", channel, exc_info=True)
            await self.finish(channel, user_id, ERROR, {
                "code": "internal_error", "message": "The answer could not start: the store is unavailable."})
            return
        try:
            await self._generate(channel, user_id, messages, options)
        finally:
            try:
                await self.peers.release(channel)
            except Exception:
                log.warning("could not release the claim on %s; it is left to the sweep", channel, exc_info=True)

    async def _generate(self, channel: str, user_id: str, messages: list[dict[str, str]],
                        options: ModelOptions) -> None:
        turn = _Turn(self)
        try:
            await self._generate_in_turn(channel, user_id, messages, options, turn)
        finally:
            turn.give_back()

    async def _generate_in_turn(self, channel: str, user_id: str, messages: list[dict[str, str]],
                                options: ModelOptions, turn: _Turn) -> None:
        try:
            async with asyncio.timeout(self.max_answer_s) as limit:

                async def model_finished() -> None:
                    limit.reschedule(None)  # the model finished in time: waiting for a turn does not count
                    await turn.take()

                finish_reason = await self._stream(channel, messages, options, model_finished)
            await turn.take()  # a stream that ended without a finish reason
        except asyncio.CancelledError:
            if self._stop_reasons.get(channel) == INTERRUPTED:
                await self.finish(channel, user_id, INTERRUPTED, {"reason": SHUTDOWN_REASON})
            else:
                await self.finish(channel, user_id, CANCELLED, {})
            return
        except TimeoutError:
            await self.finish(channel, user_id, ERROR, {
                "code": "answer_timeout", "message": f"The answer took longer than the server's limit of "
                f"{self.max_answer_s:g} s (CHIME_MAX_ANSWER_S); what arrived until then is kept."})
            return
        except (ModelError, AnswerLimit) as exc:
            await self.finish(channel, user_id, ERROR, {"code": exc.code, "message": exc.message})
            return
        except (ChannelClosed, UnknownChannel):
            return  # the conversation was deleted under the answer
        except Exception:
            log.exception("generation of %s failed", channel)
            await self.finish(channel, user_id, ERROR, {
                "code": "internal_error", "message": "The answer failed on the server."})
            return
        await self.finish(channel, user_id, DONE, {"finish_reason": finish_reason})

    async def _stream(self, channel: str, messages: list[dict[str, str]], options: ModelOptions,
                      model_finished: Callable[[], Awaitable[None]]) -> str:
        """The model's stream into the channel; its finish reason. Raises ``AnswerLimit`` past
        ``max_answer_chars``, after appending the answer up to exactly that many characters.
        ``model_finished`` is awaited at the model's finish reason, before the rest of its
        stream (usage, its end) is read: the answer's ending starts there."""
        finish_reason = "stop"
        deltas = _Deltas(self.store, channel, self.max_answer_chars)
        stream = self.provider.stream(messages, options, take=deltas.take)
        try:
            async for chunk in stream:
                # Queued, not awaited: a token still reaches no reader before its commit,
                # but the next one need not wait for it (finish() waits for them all).
                content = chunk.content
                if content:
                    room = deltas.room
                    if room is not None:
                        if len(content) > room:
                            if room:
                                await self.store.append(channel, DELTA, {"content": content[:room]}, wait=False)
                            raise AnswerLimit("answer_too_long", f"The answer passed the server's limit of "
                                              f"{self.max_answer_chars} characters (CHIME_MAX_ANSWER_CHARS); "
                                              "what arrived up to it is kept.")
                        deltas.room = room - len(content)
                    await self.store.append(channel, DELTA, {"content": content}, wait=False)
                if chunk.usage is not None:
                    await self.store.append(channel, USAGE, chunk.usage, wait=False)
                if chunk.finish_reason:
                    finish_reason = chunk.finish_reason
                    await model_finished()
        finally:
            await _close_quietly(stream)
        return finish_reason

    async def finish(self, channel: str, user_id: str, status: str, data: dict[str, Any]) -> bool:
        """Append the terminal event and run the completion hooks; False if already finished.

        A failed append is tried again (its outcome may be unknown: a writer that died
        after its commit); when a retry finds the channel closed by this very event, the
        ending still counts, so push and metrics follow it.
        """
        if self._tasks.get(channel) is asyncio.current_task():
            self._finishing.add(channel)
        watched = await self.presence.watched_anywhere(channel)  # decided before any reader is sent the event
        if not await self._append_terminal(channel, status, data):
            return False
        self.presence.forget(channel)
        completion = Completion(channel, user_id, status, data, watched)
        for hook in self.completion_hooks:
            try:
                result = hook(completion)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("completion hook failed for %s", channel)
        return True

    async def _append_terminal(self, channel: str, status: str, data: dict[str, Any]) -> bool:
        delay_s = TERMINAL_RETRY_FIRST_S
        deadline = asyncio.get_running_loop().time() + TERMINAL_RETRY_TOTAL_S
        failed = False
        while True:
            try:
                await self.store.append(channel, status, data)
                return True
            except UnknownChannel:
                return False
            except ChannelClosed:
                if not failed:
                    return False
                record = await self.store.get_channel(channel)  # did the failed try commit after all?
                return record is not None and record.status == status
            except Exception:
                failed = True
                if asyncio.get_running_loop().time() + delay_s > deadline:
                    log.exception("could not append the %s event of %s; giving up", status, channel)
                    return False
                log.warning("could not append the %s event of %s; trying again in %.2fs", status, channel,
                            delay_s, exc_info=True)
                await asyncio.sleep(delay_s)
                delay_s = min(TERMINAL_RETRY_MAX_S, delay_s * 2)


class _Turn:
    """One answer's place among the endings at once (``ENDINGS_AT_ONCE``): taken at most once,
    given back when the answer has ended."""

    __slots__ = ("_generations", "_held")

    def __init__(self, generations: Generations):
        self._generations = generations
        self._held = False

    async def take(self) -> None:
        if self._held:
            return
        generations = self._generations
        generations.waiting_to_end += 1
        try:
            await generations._endings.acquire()
        finally:
            generations.waiting_to_end -= 1
        self._held = True

    def give_back(self) -> None:
        if self._held:
            self._held = False
            self._generations._endings.release()


class _Deltas:
    """The model's text chunks appended where they arrive (``llm.base.Take``), while that needs no
    wait: no task wakes per token. Anything else (usage, the finish reason, a chunk past the
    answer's limit, a store that wants the caller to wait) is refused, for ``_stream`` to do."""

    __slots__ = ("append_nowait", "channel", "room")

    def __init__(self, store: Store, channel: str, room: int | None):
        self.append_nowait = store.append_nowait
        self.channel = channel
        self.room = room  # characters the answer may still take; None: no limit

    def take(self, chunk: Chunk) -> bool:
        content = chunk.content
        if not content or chunk.usage is not None or chunk.finish_reason is not None:
            return False
        room = self.room
        if room is not None and len(content) > room:
            return False
        if self.append_nowait(self.channel, DELTA, {"content": content}) is None:
            return False
        if room is not None:
            self.room = room - len(content)
        return True


async def _close_quietly(stream: Any) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        log.debug("closing the model stream failed", exc_info=True)
