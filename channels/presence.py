"""Presence: which readers of a channel are attached, and whether their page is in view.

Only a channel's owner can attach (everyone else gets 404), so the readers
here are the owner's. A reader starts with the channel's last reported
visibility (in view when nothing was reported); a WebSocket reader reports for
itself, ``POST .../presence`` reports for every reader of the channel.
"""

from __future__ import annotations


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
