"""Generations: the background work that turns a model's stream into a channel's events.

Each generation is a named task owned by ``Generations``. Whatever happens —
the model finishes, fails, stalls, is cancelled, or the server stops — it ends
with exactly one terminal event. ``finish`` is the only way a terminal event
is appended, so presence is decided the same way for every ending.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from channels.events import CANCELLED, DELTA, DONE, ERROR, INTERRUPTED, USAGE
from channels.store import ChannelClosed, Store, UnknownChannel
from llm.base import ModelError, Provider
from notify.presence import Presence

log = logging.getLogger("chime.generation")

SHUTDOWN_REASON = "server_shutdown"
RESTART_REASON = "server_restart"


@dataclass(frozen=True)
class Completion:
    """A channel reached its terminal event; ``watched`` was decided as it was appended."""

    channel: str
    user_id: str
    status: str
    data: dict[str, Any]
    watched: bool


CompletionHook = Callable[[Completion], Awaitable[None] | None]


class Generations:
    def __init__(self, store: Store, provider: Provider, presence: Presence):
        self.store = store
        self.provider = provider
        self.presence = presence
        self.completion_hooks: list[CompletionHook] = []
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._owners: dict[str, str] = {}
        self._stop_reasons: dict[str, str] = {}

    # ---- starting and stopping -------------------------------------------

    def start(self, channel: str, user_id: str, messages: list[dict[str, str]]) -> None:
        task = asyncio.get_running_loop().create_task(
            self._run(channel, user_id, messages), name=f"chime-generation-{channel}")
        self._tasks[channel] = task
        self._owners[channel] = user_id
        task.add_done_callback(lambda _: self._forget(channel))

    def _forget(self, channel: str) -> None:
        self._tasks.pop(channel, None)
        self._owners.pop(channel, None)
        self._stop_reasons.pop(channel, None)

    def is_running(self, channel: str) -> bool:
        return channel in self._tasks

    def running_for(self, user_id: str) -> int:
        return sum(1 for owner in self._owners.values() if owner == user_id)

    @property
    def running(self) -> int:
        return len(self._tasks)

    def cancel(self, channel: str, reason: str = CANCELLED) -> bool:
        """Ask a running generation to stop; it appends its terminal event itself."""
        task = self._tasks.get(channel)
        if task is None or task.done():
            return False
        self._stop_reasons.setdefault(channel, reason)
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
        record = await self.store.get_channel(channel)
        if record is None or not record.running or task is not None:
            return False
        return await self.finish(channel, record.user_id, CANCELLED, {})

    async def interrupt_orphans(self) -> int:
        """On start: end every channel a previous process left running as interrupted."""
        ended = 0
        for channel in await self.store.running_channels():
            if channel in self._tasks:
                continue
            record = await self.store.get_channel(channel)
            if record is not None and await self.finish(
                    channel, record.user_id, INTERRUPTED, {"reason": RESTART_REASON}):
                ended += 1
        return ended

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

    async def _run(self, channel: str, user_id: str, messages: list[dict[str, str]]) -> None:
        finish_reason = "stop"
        try:
            stream = self.provider.stream(messages)
            try:
                async for chunk in stream:
                    # Queued, not awaited: a token still reaches no reader before its commit,
                    # but the next one need not wait for it (finish() waits for them all).
                    if chunk.content:
                        await self.store.append(channel, DELTA, {"content": chunk.content}, wait=False)
                    if chunk.usage is not None:
                        await self.store.append(channel, USAGE, chunk.usage, wait=False)
                    if chunk.finish_reason:
                        finish_reason = chunk.finish_reason
            finally:
                await _close_quietly(stream)
        except asyncio.CancelledError:
            if self._stop_reasons.get(channel) == INTERRUPTED:
                await self.finish(channel, user_id, INTERRUPTED, {"reason": SHUTDOWN_REASON})
            else:
                await self.finish(channel, user_id, CANCELLED, {})
            return
        except ModelError as exc:
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

    async def finish(self, channel: str, user_id: str, status: str, data: dict[str, Any]) -> bool:
        """Append the terminal event and run the completion hooks; False if already finished."""
        watched = self.presence.watched(channel)  # decided before any reader is sent the event
        try:
            await self.store.append(channel, status, data)
        except (ChannelClosed, UnknownChannel):
            return False
        except Exception:
            log.exception("could not append the %s event of %s", status, channel)
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


async def _close_quietly(stream: Any) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        log.debug("closing the model stream failed", exc_info=True)
