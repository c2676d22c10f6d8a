"""The offline demo model: a deterministic answer for a given message, streamed token by token."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator

from llm.base import NO_OPTIONS, Chunk, ModelOptions, Take

_OPENINGS = (
    "Here is what the offline demo model can tell you.",
    "Good question — this is Chime's built-in demo model answering.",
    "The demo model is answering offline, so no real model was asked.",
)

_BODIES = (
    "Chime writes every token of an answer to its log before any reader sees it, "
    "so a reader that drops off can come back and continue from the last event it saw.",
    "Each answer is a channel: an append-only list of events with ids 1, 2, 3 and so on. "
    "Readers resume with `Last-Event-ID` and get exactly the rest.",
    "When you leave the page before the answer ends, Chime can send a push notification "
    "that opens the finished answer.",
)

_CODE = "```python\nimport httpx\n\nwith httpx.stream(\"GET\", events_url) as response:\n" \
        "    for line in response.iter_lines():\n        print(line)\n```"

_TOKEN = re.compile(r"\S+\s*|\s+")


def demo_reply(message: str) -> str:
    """The demo answer to ``message``: the same message always gets the same answer."""
    digest = hashlib.sha256(message.encode()).digest()
    quoted = " ".join(message.split())
    if len(quoted) > 200:
        quoted = quoted[:199] + "…"
    return "\n\n".join((
        _OPENINGS[digest[0] % len(_OPENINGS)],
        f"You asked: *{quoted}*",
        _BODIES[digest[1] % len(_BODIES)],
        "- it streams token by token\n- it survives reloads and restarts\n- it works offline",
        _CODE,
        "Set `OPENAI_BASE_URL`, `OPENAI_API_KEY` and `CHIME_MODEL` to talk to a real model.",
    ))


def demo_tokens(message: str) -> list[str]:
    return _TOKEN.findall(demo_reply(message))


class DemoProvider:
    name = "demo"

    def __init__(self, delay_ms: float = 30.0):
        self.delay_s = delay_ms / 1000

    async def stream(self, messages: list[dict[str, str]], options: ModelOptions = NO_OPTIONS, *,
                     take: Take | None = None) -> AsyncIterator[Chunk]:
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        tokens = demo_tokens(question)
        finish_reason = "stop"
        if options.max_tokens is not None and len(tokens) > options.max_tokens:
            tokens, finish_reason = tokens[:options.max_tokens], "length"
        for token in tokens:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)  # the demo's pacing, like a real model's
            yield Chunk(content=token)
        prompt_tokens = sum(len(m["content"].split()) for m in messages)
        yield Chunk(usage={"prompt_tokens": prompt_tokens, "completion_tokens": len(tokens),
                           "total_tokens": prompt_tokens + len(tokens)}, finish_reason=finish_reason)

    async def close(self) -> None:
        return None
