"""What the model is sent: the system prompt, the conversation's earlier turns, the new message."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class Turn(Protocol):
    """An earlier message of the conversation, as whatever stores it keeps it."""

    @property
    def role(self) -> str: ...

    @property
    def content(self) -> str: ...


def build_messages(system_prompt: str, history: Iterable[Turn], message: str,
                   budget_chars: int) -> list[dict[str, str]]:
    """The chat messages for the model, earlier turns bounded by ``budget_chars``.

    The oldest turns are dropped first; the system prompt and the new message
    always go. Empty assistant turns (an answer that produced nothing) are left out.
    """
    turns = [{"role": m.role, "content": m.content} for m in history
             if m.role in ("user", "assistant") and m.content]
    kept: list[dict[str, str]] = []
    remaining = budget_chars - len(message)
    for turn in reversed(turns):
        remaining -= len(turn["content"])
        if remaining < 0:
            break
        kept.append(turn)
    kept.reverse()
    # A history that starts with the answer to a dropped question would read oddly.
    while kept and kept[0]["role"] == "assistant":
        kept.pop(0)
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return system + kept + [{"role": "user", "content": message}]
