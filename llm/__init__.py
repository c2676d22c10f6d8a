"""Model providers: the offline ``demo`` model and any OpenAI-compatible endpoint."""

from __future__ import annotations

from llm.base import NO_OPTIONS, Chunk, ModelError, ModelOptions, Provider
from llm.demo import DemoProvider
from settings import Settings

__all__ = ["NO_OPTIONS", "Chunk", "ModelError", "ModelOptions", "Provider", "make_provider"]


def make_provider(settings: Settings) -> Provider:
    if settings.uses_demo_model:
        return DemoProvider(settings.demo_delay_ms)
    from llm.openai_provider import OpenAIProvider

    return OpenAIProvider(settings)
