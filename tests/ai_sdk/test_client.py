"""The AI SDK's real client (npm ``ai``, pinned; ``client.mjs``) against the real server process.

``bin/setup --test`` installs Node (when missing) and the client with ``npm ci``;
without either these tests fail and say how to install them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from routes.encoders import ai_sdk as wire
from tests.e2e.test_models import SYSTEM_PROMPT, model_env
from tests.support.openai_upstream import OpenAIUpstream, Reply
from tests.support.server import ROOT, ServerProcess

NODE = shutil.which("node")
CLIENT = Path(__file__).with_name("client.mjs")
CLIENT_TIMEOUT_S = 60.0
# Slow enough that an answer is still running after the client's first few parts.
LIVE_ENV = {"CHIME_DEMO_DELAY_MS": "30"}

MakeServer = Callable[..., ServerProcess]
Result = dict[str, Any]


@pytest.fixture(scope="module", autouse=True)
def installed_client() -> None:
    if NODE is None:
        pytest.fail("Node.js is not installed: run bin/setup --test (it installs nodejs and npm)")
    if not (ROOT / "node_modules" / "ai" / "package.json").exists():
        pytest.fail("the AI SDK client is not installed: run bin/setup --test (npm ci)")


def new_token(server: ServerProcess) -> str:
    response = httpx.post(f"{server.url}/api/users", timeout=10)
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


def client_env(server: ServerProcess, token: str, chat_id: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ, CHIME_URL=server.url, CHIME_TOKEN=token, CHAT_ID=chat_id)
    env.update(extra)
    return env


def run_client(scenario: str, env: dict[str, str]) -> Result:
    """Run one scenario to its end; its result."""
    done = subprocess.run([NODE or "node", str(CLIENT), scenario], check=False, env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return result_of(done.stdout.splitlines())


def result_of(lines: list[str]) -> Result:
    results = [line.removeprefix("result ") for line in lines if line.startswith("result ")]
    assert len(results) == 1, lines
    result: Result = json.loads(results[0])
    return result


def types(chunks: list[dict[str, Any]]) -> list[str]:
    return [chunk.get("type", "broken") for chunk in chunks]


def channel(server: ServerProcess, token: str, channel_id: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/api/channels/{channel_id}", headers={"Authorization": f"Bearer {token}"},
                         timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def text_of(message: dict[str, Any]) -> str:
    return "".join(part["text"] for part in message["parts"] if part["type"] == "text")


# ---- the transport's calls ------------------------------------------------------------

def test_send_messages_streams_an_answer(make_server: MakeServer) -> None:
    server = make_server()
    token = new_token(server)
    result = run_client("send", client_env(server, token, "chat-send"))
    chunks = result["chunks"]
    kinds = types(chunks)
    assert kinds[:2] == ["start", "text-start"] and kinds[-2:] == ["text-end", "finish"]
    assert chunks[-1] == {"type": "finish", "finishReason": "stop"}
    record = channel(server, token, chunks[0]["messageId"])
    assert record["status"] == "done"
    assert result["message"]["id"] == record["channel"] and text_of(result["message"]) == record["content"]


def test_reconnect_while_running_replays_from_the_start_and_follows_to_the_end(make_server: MakeServer) -> None:
    server = make_server(LIVE_ENV)
    token = new_token(server)
    result = run_client("reconnect", client_env(server, token, "chat-resume"))
    first, again = result["first"], result["again"]
    assert again[0] == first[0] and again[0]["type"] == "start"  # the same messageId
    assert types(again)[-2:] == ["text-end", "finish"]
    assert result["againText"] == result["firstText"] == channel(server, token, first[0]["messageId"])["content"]
    assert again == first
    assert text_of(result["againMessage"]) == result["firstText"]


def test_reconnect_with_nothing_running_is_null(make_server: MakeServer) -> None:
    server = make_server()
    token = new_token(server)
    assert run_client("idle", client_env(server, token, "never-asked")) == {"stream": None}
    run_client("send", client_env(server, token, "asked"))
    assert run_client("idle", client_env(server, token, "asked")) == {"stream": None}


def test_stop_ends_the_answer_with_abort(make_server: MakeServer) -> None:
    server = make_server(LIVE_ENV)
    token = new_token(server)
    result = run_client("stop", client_env(server, token, "chat-stop"))
    chunks = result["chunks"]
    assert result["status"] == 202 and result["statusAfter"] == 204
    assert types(chunks)[-2:] == ["text-end", "abort"] and "finish" not in types(chunks)
    record = channel(server, token, chunks[0]["messageId"])
    assert record["status"] == "cancelled" and text_of(result["message"]) == record["content"]


def test_a_second_message_carries_the_first_turn_and_regenerate_leaves_out_the_redone_answer(
        make_server: MakeServer) -> None:
    with OpenAIUpstream(default=Reply.text("Durable answers outlive the tab.")) as upstream:
        server = make_server(model_env(upstream))
        token = new_token(server)
        first = run_client("send", client_env(server, token, "chat-turns", QUESTION="What is Chime?"))
        history = [{"id": "q-0", "role": "user", "parts": [{"type": "text", "text": "What is Chime?"}]},
                   first["message"]]
        run_client("send", client_env(server, token, "chat-turns", QUESTION="And after a restart?",
                                      HISTORY=json.dumps(history)))
        asked = upstream.requests[-1].messages
        assert asked == [{"role": "system", "content": SYSTEM_PROMPT},
                         {"role": "user", "content": "What is Chime?"},
                         {"role": "assistant", "content": "Durable answers outlive the tab."},
                         {"role": "user", "content": "And after a restart?"}]
        redone = run_client("send", client_env(server, token, "chat-turns", QUESTION="And after a restart?",
                                               HISTORY=json.dumps(history), TRIGGER="regenerate-message"))
        assert upstream.requests[-1].messages == asked
        assert types(redone["chunks"])[-1] == "finish"
        stored = httpx.get(f"{server.url}/api/ai/chat/chat-turns", headers={"Authorization": f"Bearer {token}"},
                           timeout=10).json()["messages"]
        assert [m["role"] for m in stored] == ["user", "assistant"] * 3  # the earlier answer stays


# ---- a crash ---------------------------------------------------------------------------

def read_until(stdout: IO[str], wanted: str) -> list[str]:
    """Lines of the client's output up to and including ``wanted``; the client's own
    deadline (the subprocess timeout below) bounds the wait."""
    lines = []
    for line in stdout:
        lines.append(line.rstrip("\n"))
        if lines[-1] == wanted:
            return lines
    raise AssertionError(f"the client ended before {wanted!r}: {lines}")


def test_a_kill_and_restart_mid_answer_gives_a_resumed_stream_that_ends_cleanly(make_server: MakeServer) -> None:
    server = make_server({"CHIME_DEMO_DELAY_MS": "40"})
    token = new_token(server)
    client = subprocess.Popen(["timeout", str(int(CLIENT_TIMEOUT_S)), NODE or "node", str(CLIENT), "crash"],
                              env=client_env(server, token, "chat-crash"), cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert client.stdin is not None and client.stdout is not None
    try:
        read_until(client.stdout, "killable")
        server.kill()
        read_until(client.stdout, "act")  # the client saw its stream break
        server.start()
        client.stdin.write("go\n")
        client.stdin.flush()
        out, err = client.communicate(timeout=CLIENT_TIMEOUT_S)
    finally:
        if client.poll() is None:
            client.kill()
    assert client.returncode == 0, err
    result = result_of(out.splitlines())
    before, after = result["before"], result["after"]
    assert "broken" in before[-1] and "finish" not in types(before)
    assert after is not None and "start" not in types(after)
    assert types(after)[-2:] == ["text-end", "error"]
    assert after[-1]["errorText"] == wire.INTERRUPTIONS["server_restart"]
    record = channel(server, token, before[0]["messageId"])
    assert record["status"] == "interrupted" and result["text"] == record["content"]
    assert text_of(result["message"]) == record["content"]
