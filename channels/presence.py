"""Presence: which readers of a channel are attached, and whether their page is in view.

Only a channel's owner can attach (everyone else gets 404), so the readers
here are the owner's. A reader starts with the channel's last reported
visibility (in view when nothing was reported); a WebSocket reader reports for
itself, ``POST .../presence`` reports for every reader of the channel.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

log = logging.getLogger("chime.presence")


class Reader:
    __slots__ = ("channel", "visible")

    def __init__(self, channel: str, visible: bool):
        self.channel = channel
        self.visible = visible


class Presence:
    def __init__(self) -> None:
        self._readers: dict[str, set[Reader]] = {}
        self._reported: dict[str, bool] = {}

    def attach(self, channel: str) -> Reader:
        reader = Reader(channel, self._reported.get(channel, True))
        self._readers.setdefault(channel, set()).add(reader)
        return reader

    def detach(self, reader: Reader) -> None:
        readers = self._readers.get(reader.channel)
        if readers is not None:
            readers.discard(reader)
            if not readers:
                del self._readers[reader.channel]

    def report(self, channel: str, visible: bool, reader: Reader | None = None) -> None:
        """A visibility report: from one WebSocket ``reader``, or for the whole channel."""
        if reader is not None:
            reader.visible = visible
            return
        self._reported[channel] = visible
        for each in self._readers.get(channel, ()):
            each.visible = visible

    def watched(self, channel: str) -> bool:
        """True when some attached reader of the channel has its page in view."""
        return any(reader.visible for reader in self._readers.get(channel, ()))

    def attached(self, channel: str) -> int:
        return len(self._readers.get(channel, ()))

    def forget(self, channel: str) -> None:
        """The channel ended: its remembered report is of no more use."""
        self._reported.pop(channel, None)

    async def watched_anywhere(self, channel: str) -> bool:
        """``watched``, counting the readers of every process that serves the same store."""
        return self.watched(channel)

    def visible(self, channel: str) -> int:
        return sum(1 for reader in self._readers.get(channel, ()) if reader.visible)


class Board(Protocol):
    """Where the processes of one service share their presence (``channels.peers`` in Redis)."""

    async def post_presence(self, counts: dict[str, tuple[int, int]]) -> None:
        """This process's ``(attached, visible)`` readers of each channel given ((0, 0): none)."""
        ...
    async def visible_elsewhere(self, channel: str) -> bool:
        """Whether a reader of the channel on another live process has its page in view."""
        ...
    async def post_report(self, channel: str, visible: bool) -> None:
        """A report for the whole channel, for the readers of every other process."""
        ...


class SharedPresence(Presence):
    """Presence across processes: each posts its readers' counts to the board, and a report
    for a whole channel reaches the readers of every process (``apply_report``).

    Posting is not awaited by readers: changes are gathered and posted in one write
    while the previous one is under way, so a thousand attaching readers cost a few writes.
    """

    def __init__(self, board: Board) -> None:
        super().__init__()
        self.board = board
        self._dirty: set[str] = set()
        self._posting: asyncio.Task[None] | None = None
        self._closed = False

    def attach(self, channel: str) -> Reader:
        reader = super().attach(channel)
        self._changed(channel)
        return reader

    def detach(self, reader: Reader) -> None:
        super().detach(reader)
        self._changed(reader.channel)

    def report(self, channel: str, visible: bool, reader: Reader | None = None) -> None:
        super().report(channel, visible, reader)
        self._changed(channel)
        if reader is None and not self._closed:
            asyncio.get_running_loop().create_task(self._post_report(channel, visible))

    def apply_report(self, channel: str, visible: bool) -> None:
        """A whole-channel report made through another process."""
        super().report(channel, visible)
        self._changed(channel)

    async def watched_anywhere(self, channel: str) -> bool:
        if self.watched(channel):
            return True
        try:
            return await self.board.visible_elsewhere(channel)
        except Exception:
            log.warning("could not read other processes' readers of %s; counting this one's", channel,
                        exc_info=True)
            return False

    async def flushed(self) -> None:
        """Wait until every change so far is posted (tests, and stopping)."""
        while self._posting is not None:
            await asyncio.shield(self._posting)

    async def close(self) -> None:
        """Before the board's connection closes: post what is pending, then nothing more (this
        process's readers stop counting anyway once its lease is given up)."""
        await self.flushed()
        self._closed = True

    def _changed(self, channel: str) -> None:
        if self._closed:
            return
        self._dirty.add(channel)
        if self._posting is None:
            self._posting = asyncio.get_running_loop().create_task(self._post(), name="chime-presence-post")

    async def _post(self) -> None:
        try:
            while self._dirty:
                dirty, self._dirty = self._dirty, set()
                counts = {channel: (self.attached(channel), self.visible(channel)) for channel in dirty}
                try:
                    await self.board.post_presence(counts)
                except Exception:
                    log.warning("could not post this process's readers; other processes may push to "
                                "users who are reading here", exc_info=True)
        finally:
            self._posting = None

    async def _post_report(self, channel: str, visible: bool) -> None:
        try:
            await self.board.post_report(channel, visible)
        except Exception:
            log.warning("could not pass a presence report for %s to the other processes", channel, exc_info=True)
