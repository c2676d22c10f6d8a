"""Wire formats: one module per transport, each an encoder over the one reader.

Every transport reads a channel through ``channels.reader.replay_then_live``
(``routes.streams.subscribe``) and differs only in how it encodes a batch of
events. An encoder builds an event's bytes once and keeps them on the event, at
the slot ``take_slot`` gave it, so all readers of that transport are sent the
same bytes. A new wire protocol is one new module here: take a slot, build an
event's bytes, and give a ``StreamEncoder`` (or, like polling, a page builder).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from channels.events import Event

Encode = Callable[[list[Event]], bytes]

_slots: list[str] = []


def take_slot(name: str) -> int:
    """A place on every event for one encoder's bytes; taken once, when its module is imported."""
    if name in _slots:
        raise ValueError(f"an encoder named {name!r} already has a slot")
    _slots.append(name)
    return len(_slots) - 1


def remember(event: Event, slot: int, built: bytes) -> bytes:
    """Keep ``built`` as the event's bytes at ``slot``; returns it."""
    encoded = event.encoded
    if encoded is None:
        encoded = event.encoded = [None] * len(_slots)
    elif len(encoded) <= slot:  # an encoder imported after this event was first encoded
        encoded.extend([None] * (len(_slots) - len(encoded)))
    encoded[slot] = built
    return built


@dataclass(frozen=True, slots=True)
class StreamEncoder:
    """How a streaming transport writes events: the same reader under every one of them.

    ``encode`` turns a batch (ids in order, never empty) into one write;
    ``keepalive`` is written when the stream has been quiet for the keepalive
    interval (``None``: the transport needs none, nothing is written).
    """

    transport: str  # the ``transport`` label of the readers metric
    encode: Encode
    keepalive: bytes | None = None
