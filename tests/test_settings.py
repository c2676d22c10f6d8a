"""Settings.from_env: casts, defaults, and errors that say what to fix."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import FrozenInstanceError, fields
from pathlib import Path

import pytest

from settings import _ENVIRONMENT, Settings, SettingsError
from tests.support.server import ROOT


def test_an_empty_environment_gives_the_documented_defaults() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert (settings.host, settings.port, settings.data_dir) == ("127.0.0.1", 8000, Path("./data"))
    assert settings.demo_delay_ms == 30 and settings.keepalive_s == 15
    assert settings.max_body_bytes == 1_048_576
    assert settings.uses_demo_model and settings.model_name == "demo"
    assert settings.db_path == Path("./data/chime.sqlite3")


def test_values_are_cast_to_their_types() -> None:
    settings = Settings.from_env({
        "CHIME_HOST": "0.0.0.0", "CHIME_PORT": " 9000 ", "CHIME_DATA_DIR": "/tmp/chime-data",
        "CHIME_DEMO_DELAY_MS": "2.5", "CHIME_KEEPALIVE_S": "0.25", "CHIME_MAX_BODY_BYTES": "4096",
        "CHIME_PUSH_ALLOW_PRIVATE": "yes", "CHIME_LOG_LEVEL": "debug", "CHIME_TEMPERATURE": "0.2",
        "CHIME_MAX_TOKENS": "256", "CHIME_SSE_RETRY_MS": "500", "CHIME_SHUTDOWN_GRACE_S": "0",
    })
    assert settings.host == "0.0.0.0" and settings.port == 9000
    assert settings.data_dir == Path("/tmp/chime-data")
    assert settings.demo_delay_ms == 2.5 and settings.keepalive_s == 0.25
    assert settings.max_body_bytes == 4096 and settings.sse_retry_ms == 500
    assert settings.push_allow_private is True and settings.log_level == "DEBUG"
    assert settings.temperature == 0.2 and settings.max_tokens == 256 and settings.shutdown_grace_s == 0


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("true", True), ("ON", True), ("0", False),
                                            ("false", False), ("No", False), ("off", False)])
def test_booleans(raw: str, value: bool) -> None:
    assert Settings.from_env({"CHIME_PUSH_ALLOW_PRIVATE": raw}).push_allow_private is value


def test_blank_values_mean_the_default() -> None:
    assert Settings.from_env({"CHIME_PORT": "", "CHIME_KEEPALIVE_S": "  ", "OPENAI_API_KEY": ""}) == Settings()


def test_a_model_endpoint_turns_off_the_demo() -> None:
    settings = Settings.from_env({"OPENAI_BASE_URL": "http://127.0.0.1:1/v1", "CHIME_MODEL": "llama"})
    assert not settings.uses_demo_model and settings.model_name == "llama"
    assert Settings.from_env({"OPENAI_API_KEY": "sk-x"}).model_name == "gpt-4o-mini"


def test_every_field_has_an_environment_variable() -> None:
    assert set(_ENVIRONMENT) == {f.name for f in fields(Settings)}
    assert all(var.startswith(("CHIME_", "OPENAI_")) for var, _ in _ENVIRONMENT.values())


def test_settings_are_frozen() -> None:
    with pytest.raises(FrozenInstanceError):
        Settings().port = 1  # type: ignore[misc]


@pytest.mark.parametrize(("variable", "raw"), [
    ("CHIME_PORT", "eighty"), ("CHIME_PORT", "80.5"), ("CHIME_PORT", "0"), ("CHIME_PORT", "70000"),
    ("CHIME_PORT", "-1"), ("CHIME_KEEPALIVE_S", "0"), ("CHIME_KEEPALIVE_S", "soon"),
    ("CHIME_DEMO_DELAY_MS", "-5"), ("CHIME_MAX_BODY_BYTES", "0"), ("CHIME_MAX_BODY_BYTES", "1MB"),
    ("CHIME_SHUTDOWN_GRACE_S", "-1"), ("CHIME_PUSH_ALLOW_PRIVATE", "maybe"), ("CHIME_SSE_RETRY_MS", "0"),
    ("CHIME_MAX_RUNNING_PER_USER", "0"), ("CHIME_SUBMISSIONS_PER_MINUTE", "-3"),
    ("CHIME_VAPID_SUBJECT", "admin@example.com"), ("CHIME_PUSH_TTL_S", "60"),
    ("CHIME_KEEPALIVE_S", "nan"), ("CHIME_DEMO_DELAY_MS", "inf"), ("CHIME_TEMPERATURE", "nan"),
])
def test_a_bad_value_is_an_error_that_names_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env({variable: raw})
    assert variable in str(error.value)


def test_the_server_refuses_to_start_with_a_bad_value(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHIME_", "OPENAI_"))}
    env.update({"CHIME_PORT": "eighty", "CHIME_DATA_DIR": str(tmp_path)})
    result = subprocess.run([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "CHIME_PORT" in result.stderr and "Traceback" not in result.stderr


def test_the_public_deployment_settings_are_read_and_checked() -> None:
    settings = Settings.from_env({
        "CHIME_ALLOWED_ORIGINS": " https://App.example.com/ , http://localhost:3000,", "CHIME_PROXIES_COUNT": "2",
        "CHIME_MAX_RUNNING": "9", "CHIME_NEW_USERS_PER_MINUTE": "5", "CHIME_MAX_ANSWER_CHARS": "1000",
        "CHIME_MAX_ANSWER_S": "60", "CHIME_REQUEST_TIMEOUT_S": "7.5"})
    assert settings.allowed_origins == ("https://app.example.com", "http://localhost:3000")
    assert (settings.proxies_count, settings.max_running, settings.new_users_per_minute) == (2, 9, 5)
    assert (settings.max_answer_chars, settings.max_answer_s, settings.request_timeout_s) == (1000, 60, 7.5)
    defaults = Settings()
    assert (defaults.max_running, defaults.new_users_per_minute, defaults.max_answer_chars) == (256, 20, 200_000)
    assert (defaults.max_answer_s, defaults.request_timeout_s, defaults.allowed_origins) == (900, 30, ())


@pytest.mark.parametrize("var, raw, says", [
    ("CHIME_ALLOWED_ORIGINS", "app.example.com", "CHIME_ALLOWED_ORIGINS"),
    ("CHIME_ALLOWED_ORIGINS", "https://app.example.com/chat", "CHIME_ALLOWED_ORIGINS"),
    ("CHIME_ALLOWED_ORIGINS", "ftp://app.example.com", "CHIME_ALLOWED_ORIGINS"),
    ("CHIME_PROXIES_COUNT", "-1", "CHIME_PROXIES_COUNT"),
    ("CHIME_MAX_RUNNING", "0", "CHIME_MAX_RUNNING"),
    ("CHIME_NEW_USERS_PER_MINUTE", "0", "CHIME_NEW_USERS_PER_MINUTE"),
    ("CHIME_MAX_ANSWER_CHARS", "0", "CHIME_MAX_ANSWER_CHARS"),
    ("CHIME_MAX_ANSWER_S", "nan", "CHIME_MAX_ANSWER_S"),
    ("CHIME_REQUEST_TIMEOUT_S", "0", "CHIME_REQUEST_TIMEOUT_S"),
])
def test_bad_public_deployment_settings_say_what_to_fix(var: str, raw: str, says: str) -> None:
    with pytest.raises(SettingsError, match=says):
        Settings.from_env({var: raw})


@pytest.mark.parametrize(("env", "says"), [
    ({"CHIME_LOG_LEVEL": "verbose"}, "CHIME_LOG_LEVEL='verbose' must be one of DEBUG, INFO, WARNING, ERROR"),
    ({"OPENAI_BASE_URL": "localhost:11434"}, "e.g. http://localhost:11434/v1"),
    ({"OPENAI_BASE_URL": "localhost:8080/v1"}, "e.g. http://localhost:8080/v1"),
    ({"OPENAI_BASE_URL": "ftp://models.example.com/v1"}, "OPENAI_BASE_URL"),
    ({"OPENAI_BASE_URL": "http://"}, "OPENAI_BASE_URL"),
    ({"CHIME_MAX_TOKENS": "-5"}, "CHIME_MAX_TOKENS=-5 must be greater than 0"),
    ({"CHIME_MAX_TOKENS": "0"}, "CHIME_MAX_TOKENS"),
    ({"CHIME_TEMPERATURE": "5"}, "CHIME_TEMPERATURE=5 must be from 0 to 2"),
    ({"CHIME_TEMPERATURE": "-0.1"}, "CHIME_TEMPERATURE"),
    ({"CHIME_MODEL": "llama3.2"}, "offline demo model answers"),
])
def test_model_settings_that_would_fail_every_answer_are_refused_at_start(env: dict[str, str], says: str) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env(env)
    assert says in str(error.value)


def test_the_model_settings_at_their_limits_are_accepted() -> None:
    settings = Settings.from_env({"OPENAI_BASE_URL": "https://models.example.com/v1", "CHIME_MODEL": "llama3.2",
                                  "CHIME_TEMPERATURE": "2", "CHIME_MAX_TOKENS": "1", "CHIME_LOG_LEVEL": "error"})
    assert (settings.temperature, settings.max_tokens, settings.log_level) == (2, 1, "ERROR")
    assert Settings.from_env({"CHIME_TEMPERATURE": "0"}).temperature == 0
    # The offline demo may be named; any other name needs an endpoint.
    assert Settings.from_env({"CHIME_MODEL": "demo"}).model_name == "demo"
    assert Settings.from_env({"OPENAI_API_KEY": "sk-x", "CHIME_MODEL": "gpt-4o"}).model_name == "gpt-4o"


def test_one_process_on_sqlite_is_the_default() -> None:
    settings = Settings.from_env({})
    assert (settings.redis_url, settings.workers, settings.lease_s) == (None, 1, 10.0)


def test_the_scale_out_settings_are_read() -> None:
    settings = Settings.from_env({"CHIME_REDIS_URL": " redis://127.0.0.1:6379/0 ", "CHIME_WORKERS": "4",
                                  "CHIME_LEASE_S": "2.5"})
    assert (settings.redis_url, settings.workers, settings.lease_s) == ("redis://127.0.0.1:6379/0", 4, 2.5)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://chime:secret@redis.example.com:6380/1",
                                 "unix:///run/redis/redis.sock", "redis://localhost"])
def test_redis_urls_are_accepted(url: str) -> None:
    assert Settings.from_env({"CHIME_REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize(("env", "says"), [
    ({"CHIME_REDIS_URL": "localhost:6379"}, "CHIME_REDIS_URL='localhost:6379' must be a redis://, rediss:// or "
                                            "unix:// URL, e.g. redis://127.0.0.1:6379/0"),
    ({"CHIME_REDIS_URL": "http://redis.example.com"}, "CHIME_REDIS_URL"),
    ({"CHIME_REDIS_URL": "unix://"}, "unix:///run/redis/redis.sock"),
    ({"CHIME_REDIS_URL": "redis://redis.example.com:99999"}, "CHIME_REDIS_URL"),
    ({"CHIME_WORKERS": "0"}, "CHIME_WORKERS must be greater than 0"),
    ({"CHIME_WORKERS": "two"}, "CHIME_WORKERS='two' is not valid"),
    ({"CHIME_WORKERS": "1.5"}, "CHIME_WORKERS"),
    ({"CHIME_LEASE_S": "0"}, "CHIME_LEASE_S must be greater than 0"),
    ({"CHIME_LEASE_S": "-1"}, "CHIME_LEASE_S"),
    ({"CHIME_LEASE_S": "inf"}, "CHIME_LEASE_S must be a finite number"),
])
def test_bad_scale_out_settings_say_what_to_fix(env: dict[str, str], says: str) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env(env)
    assert says in str(error.value)


def test_a_redis_password_is_not_repeated_in_the_refusal() -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env({"CHIME_REDIS_URL": "http://chime:hunter2@redis.example.com"})
    assert "hunter2" not in str(error.value) and "chime:***@redis.example.com" in str(error.value)
