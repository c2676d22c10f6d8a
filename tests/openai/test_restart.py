"""A kill -9 and a restart between two reads of a background response: the same numbers, and an ending."""

from __future__ import annotations

from pathlib import Path

import openai

from tests.openai.conftest import new_token, sdk
from tests.support.server import ServerProcess


def test_a_resumed_stream_after_kill_9_continues_the_numbering_and_ends_incomplete(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", {"CHIME_DEMO_DELAY_MS": "100"}).start()
    try:
        token = new_token(server)
        with sdk(server, token) as client:
            stream = client.responses.create(model="demo", input="crash while answering", background=True,
                                             stream=True)
            seen = [event for _, event in zip(range(7), stream, strict=False)]  # the opening four and three deltas
            assert seen[0].type == "response.created"
            response_id = seen[0].response.id
            server.kill()
            stream.close()
        server.start()
        with sdk(server, token) as client:
            rest = list(client.responses.retrieve(response_id, stream=True, starting_after=6))
            numbers = [e.sequence_number for e in seen + rest]
            assert numbers == list(range(len(numbers)))
            assert rest[-1].type == "response.incomplete"
            final = rest[-1].response
            assert final.status == "incomplete" and final.error is not None
            assert "server_restart" in final.error.message
            replay = list(client.responses.retrieve(response_id, stream=True))
            assert [e.model_dump() for e in replay] == [e.model_dump() for e in seen + rest]
            assert client.responses.retrieve(response_id).status == "incomplete"
            with client.responses.stream(response_id=response_id) as by_id:
                assert [e.sequence_number for e in by_id] == numbers
    finally:
        server.__exit__()


def test_a_response_cut_by_kill_9_is_not_left_running(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", {"CHIME_DEMO_DELAY_MS": "100"}).start()
    try:
        token = new_token(server)
        with sdk(server, token) as client:
            created = client.responses.create(model="demo", input="crash me", background=True)
        server.kill()
        server.start()
        with openai.OpenAI(base_url=f"{server.url}/v1", api_key=token, max_retries=0, timeout=20) as client:
            assert client.responses.retrieve(created.id).status == "incomplete"
            assert client.responses.cancel(created.id).status == "incomplete"
    finally:
        server.__exit__()
