"""The fence around Sanic's internals: checked at start, and an off switch."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sanic.http import http1
from sanic.server.websockets import impl as ws_impl

from routes import sanic_internals


@pytest.fixture
def switch() -> Iterator[None]:
    yield
    sanic_internals.configure(True)


def test_this_sanic_has_everything_the_fast_path_uses() -> None:
    assert sanic_internals.PROBLEMS == ()
    assert sanic_internals.find_problems() == []


def test_a_sanic_without_one_of_them_is_found_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(http1.Http, "http1_response_chunked")
    monkeypatch.delattr(ws_impl.WebsocketImplProtocol, "async_data_received")
    assert sanic_internals.find_problems() == ["Http.http1_response_chunked is not a method",
                                               "WebsocketImplProtocol.async_data_received is not a method"]


def test_with_problems_the_switch_stays_off(monkeypatch: pytest.MonkeyPatch, switch: None) -> None:
    monkeypatch.setattr(sanic_internals, "PROBLEMS", ("Http.stage is not a slot",))
    assert sanic_internals.configure(True) is False and not sanic_internals.enabled


def test_the_switch(switch: None) -> None:
    assert sanic_internals.configure(False) is False and not sanic_internals.enabled
    assert sanic_internals.configure(True) is True and sanic_internals.enabled
