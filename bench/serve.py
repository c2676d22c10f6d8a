"""``python -m bench.serve``: the Chime server with the model's HTTP client chosen by the bench.

``CHIME_BENCH_HTTP_CLIENT=aiohttp`` gives the OpenAI provider the SDK's own
aiohttp client (``openai.DefaultAioHttpClient``) in place of the lean HTTP/1.1
transport, so the two can be compared on the same rows without the product
offering a switch. ``lean`` (or unset) runs the server exactly as ``app.py``.

The stall limit (``CHIME_MODEL_STALL_S``) still holds with aiohttp, though
differently: the SDK passes it as the read timeout, which aiohttp enforces as
``sock_read`` (any byte resets it), and the provider checks its own deadline
each time bytes arrive; only the lean transport's watchdog ends a read that
waits past the deadline with bytes trickling in that never finish an event.
"""

from __future__ import annotations

import os

HTTP_CLIENTS = ("lean", "aiohttp")


def use_aiohttp() -> None:
    """Every ``OpenAIProvider`` made from now on reads the model through aiohttp."""
    import httpx2
    import openai

    from llm import openai_provider
    from settings import Settings

    original = openai_provider.OpenAIProvider.__init__

    def init(self: openai_provider.OpenAIProvider, settings: Settings, *,
             http_client: httpx2.AsyncClient | None = None) -> None:
        original(self, settings, http_client=http_client or openai.DefaultAioHttpClient())

    openai_provider.OpenAIProvider.__init__ = init  # type: ignore[method-assign]


def main() -> None:
    client = os.environ.get("CHIME_BENCH_HTTP_CLIENT", "lean")
    if client not in HTTP_CLIENTS:
        raise SystemExit(f"CHIME_BENCH_HTTP_CLIENT must be one of {', '.join(HTTP_CLIENTS)}, not {client!r}")
    if client == "aiohttp":
        use_aiohttp()
    import app

    app.main()


if __name__ == "__main__":
    main()
