"""Chime's configuration: read once from the environment into a frozen object.

Every knob is an environment variable (listed in the README). Tests build
``Settings(...)`` directly; nothing reads ``os.environ`` after start-up.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEMO_MODEL = "demo"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# OpenAI documents 0 to 2; a value outside is refused by the endpoint on every answer.
TEMPERATURE_RANGE = (0.0, 2.0)


class SettingsError(ValueError):
    """A configuration value that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("./data")

    # Several processes as one service. Without a Redis URL, SQLite under data_dir is the
    # store and one process serves; with it, every process started on the same URL shares it.
    redis_url: str | None = None
    workers: int = 1
    # How soon answers of a process that died without stopping end as interrupted.
    lease_s: float = 10.0

    # The model. With neither a key nor a base URL, the offline demo model answers.
    openai_base_url: str | None = None
    openai_api_key: str | None = None
    model: str = ""
    system_prompt: str = "You are a helpful assistant."
    temperature: float | None = None
    max_tokens: int | None = None
    history_budget_chars: int = 24_000
    demo_delay_ms: float = 30.0
    model_stall_s: float = 60.0
    model_connect_timeout_s: float = 10.0
    model_retries: int = 3
    model_retry_base_s: float = 0.5

    # Streams.
    keepalive_s: float = 15.0
    sse_retry_ms: int = 2_000
    max_body_bytes: int = 1_048_576
    shutdown_grace_s: float = 5.0

    # Limits: per user, per client address, and for the whole service.
    max_running_per_user: int = 4
    submissions_per_minute: int = 30
    max_running: int = 256
    new_users_per_minute: int = 20

    # Public deployment: other sites, proxies, hostile clients, endless answers.
    allowed_origins: tuple[str, ...] = ()
    proxies_count: int = 0
    request_timeout_s: float = 30.0
    max_answer_chars: int = 200_000
    max_answer_s: float = 900.0
    # Sanic's private internals (routes/sanic_internals.py): live events written straight to
    # the socket, the WebSocket flood guard's hook, the first-byte request deadline. Off:
    # Sanic's public API only, slower, and with Sanic's own request timeout.
    fast_path: bool = True

    # Web Push.
    push_allow_private: bool = False
    vapid_subject: str = "mailto:admin@chime.invalid"
    push_ttl_s: int = 86_400
    push_timeout_s: float = 10.0
    push_retries: int = 3
    push_retry_base_s: float = 1.0

    log_level: str = "INFO"

    @property
    def uses_demo_model(self) -> bool:
        return not (self.openai_api_key or self.openai_base_url)

    @property
    def model_name(self) -> str:
        """The model that answers: ``demo`` offline, else CHIME_MODEL."""
        if self.uses_demo_model:
            return self.model or DEMO_MODEL
        return self.model or "gpt-4o-mini"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "chime.sqlite3"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, (var, cast) in _ENVIRONMENT.items():
            raw = env.get(var)
            if raw is None or raw.strip() == "":
                continue
            try:
                values[name] = cast(raw.strip())
            except (TypeError, ValueError) as exc:
                raise SettingsError(f"{var}={raw!r} is not valid: {exc}") from None
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise SettingsError(f"{_var(spec.name)} must be a finite number")
        positive = ("port", "keepalive_s", "sse_retry_ms", "max_body_bytes",
                    "history_budget_chars", "model_stall_s", "model_connect_timeout_s",
                    "max_running_per_user", "submissions_per_minute", "push_ttl_s", "push_timeout_s",
                    "max_running", "new_users_per_minute", "request_timeout_s", "max_answer_chars",
                    "max_answer_s", "workers", "lease_s")
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{_var(name)} must be greater than 0")
        for name in ("demo_delay_ms", "shutdown_grace_s", "model_retries", "model_retry_base_s",
                     "push_retries", "push_retry_base_s", "proxies_count"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{_var(name)} must not be negative")
        if not 0 < self.port < 65_536:
            raise SettingsError("CHIME_PORT must be between 1 and 65535")
        if not self.vapid_subject.startswith(("mailto:", "https://")):
            raise SettingsError("CHIME_VAPID_SUBJECT must start with mailto: or https://")
        if self.push_retries > 10:
            raise SettingsError("CHIME_PUSH_RETRIES must be at most 10")
        if self.push_ttl_s < 3_600:
            raise SettingsError("CHIME_PUSH_TTL_S must be at least 3600 (one hour)")
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(f"CHIME_LOG_LEVEL={self.log_level.lower()!r} must be one of "
                                f"{', '.join(LOG_LEVELS)}")
        if self.redis_url is not None:
            _check_redis_url(self.redis_url)
        self._validate_model()

    def _validate_model(self) -> None:
        """The model settings an answer would otherwise fail on, refused at start instead."""
        if self.openai_base_url is not None:
            _check_base_url(self.openai_base_url)
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise SettingsError(f"CHIME_MAX_TOKENS={self.max_tokens} must be greater than 0 (or unset)")
        low, high = TEMPERATURE_RANGE
        if self.temperature is not None and not low <= self.temperature <= high:
            raise SettingsError(f"CHIME_TEMPERATURE={self.temperature:g} must be from {low:g} to {high:g} "
                                "(or unset)")
        # Refused rather than silently answered by the demo: an operator who names a model
        # expects it to answer, and a demo reply that looks like the model's would mislead.
        if self.uses_demo_model and self.model not in ("", DEMO_MODEL):
            raise SettingsError(
                f"CHIME_MODEL={self.model!r} needs a model endpoint: set OPENAI_BASE_URL (e.g. "
                "http://localhost:11434/v1 for Ollama) or OPENAI_API_KEY; without either the offline "
                "demo model answers, and CHIME_MODEL must be unset or 'demo'")


def _check_base_url(raw: str) -> None:
    parts = urlsplit(raw)
    if parts.scheme in ("http", "https") and parts.hostname:
        return
    bare = raw.split("://", 1)[-1].strip("/") or "localhost:11434"
    suggestion = f"http://{bare}" if "/" in bare else f"http://{bare}/v1"
    raise SettingsError(f"OPENAI_BASE_URL={raw!r} must be an http:// or https:// URL, "
                        f"e.g. {suggestion}")


def _check_redis_url(raw: str) -> None:
    parts = urlsplit(raw)
    try:
        _ = parts.port  # raises ValueError for a port that is not a number from 0 to 65535
    except ValueError as exc:
        raise SettingsError(f"CHIME_REDIS_URL={_without_password(raw)!r} is not valid: {exc}") from None
    named = raw.lower().startswith(("redis://", "rediss://", "unix://"))
    if named and (parts.scheme != "unix" or parts.path):
        return
    raise SettingsError(f"CHIME_REDIS_URL={_without_password(raw)!r} must be a redis://, rediss:// or unix:// "
                        "URL, e.g. redis://127.0.0.1:6379/0 or unix:///run/redis/redis.sock")


def _without_password(raw: str) -> str:
    """The URL as an operator may read it on a terminal: a password in it is masked."""
    user, at, host = raw.rpartition("@")
    if not at or ":" not in user.split("://", 1)[-1]:
        return raw
    return f"{user.rpartition(':')[0]}:***@{host}"


def _bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def _str(raw: str) -> str:
    return raw


def _origins(raw: str) -> tuple[str, ...]:
    """Comma-separated origins, each ``scheme://host[:port]`` as a browser sends it in ``Origin``."""
    origins = []
    for item in raw.split(","):
        origin = item.strip().rstrip("/").lower()
        if not origin:
            continue
        scheme, sep, rest = origin.partition("://")
        if not sep or scheme not in ("http", "https") or not rest or "/" in rest:
            raise ValueError(f"{item.strip()!r} is not an origin like https://chat.example.com")
        origins.append(origin)
    return tuple(origins)


_ENVIRONMENT: dict[str, tuple[str, Callable[[str], Any]]] = {
    "host": ("CHIME_HOST", _str),
    "port": ("CHIME_PORT", int),
    "data_dir": ("CHIME_DATA_DIR", Path),
    "redis_url": ("CHIME_REDIS_URL", _str),
    "workers": ("CHIME_WORKERS", int),
    "lease_s": ("CHIME_LEASE_S", float),
    "openai_base_url": ("OPENAI_BASE_URL", _str),
    "openai_api_key": ("OPENAI_API_KEY", _str),
    "model": ("CHIME_MODEL", _str),
    "system_prompt": ("CHIME_SYSTEM_PROMPT", _str),
    "temperature": ("CHIME_TEMPERATURE", float),
    "max_tokens": ("CHIME_MAX_TOKENS", int),
    "history_budget_chars": ("CHIME_HISTORY_BUDGET_CHARS", int),
    "demo_delay_ms": ("CHIME_DEMO_DELAY_MS", float),
    "model_stall_s": ("CHIME_MODEL_STALL_S", float),
    "model_connect_timeout_s": ("CHIME_MODEL_CONNECT_TIMEOUT_S", float),
    "model_retries": ("CHIME_MODEL_RETRIES", int),
    "model_retry_base_s": ("CHIME_MODEL_RETRY_BASE_S", float),
    "keepalive_s": ("CHIME_KEEPALIVE_S", float),
    "sse_retry_ms": ("CHIME_SSE_RETRY_MS", int),
    "max_body_bytes": ("CHIME_MAX_BODY_BYTES", int),
    "shutdown_grace_s": ("CHIME_SHUTDOWN_GRACE_S", float),
    "max_running_per_user": ("CHIME_MAX_RUNNING_PER_USER", int),
    "submissions_per_minute": ("CHIME_SUBMISSIONS_PER_MINUTE", int),
    "max_running": ("CHIME_MAX_RUNNING", int),
    "new_users_per_minute": ("CHIME_NEW_USERS_PER_MINUTE", int),
    "allowed_origins": ("CHIME_ALLOWED_ORIGINS", _origins),
    "proxies_count": ("CHIME_PROXIES_COUNT", int),
    "request_timeout_s": ("CHIME_REQUEST_TIMEOUT_S", float),
    "max_answer_chars": ("CHIME_MAX_ANSWER_CHARS", int),
    "max_answer_s": ("CHIME_MAX_ANSWER_S", float),
    "fast_path": ("CHIME_FAST_PATH", _bool),
    "push_allow_private": ("CHIME_PUSH_ALLOW_PRIVATE", _bool),
    "vapid_subject": ("CHIME_VAPID_SUBJECT", _str),
    "push_ttl_s": ("CHIME_PUSH_TTL_S", int),
    "push_timeout_s": ("CHIME_PUSH_TIMEOUT_S", float),
    "push_retries": ("CHIME_PUSH_RETRIES", int),
    "push_retry_base_s": ("CHIME_PUSH_RETRY_BASE_S", float),
    "log_level": ("CHIME_LOG_LEVEL", str.upper),
}

assert set(_ENVIRONMENT) == {f.name for f in fields(Settings)}


def _var(name: str) -> str:
    return _ENVIRONMENT[name][0]
