"""Network drops and reloads mid-answer: the page keeps its text and recovers the exact answer."""

from __future__ import annotations

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.browser.chat_page import (
    ask,
    choose_transport,
    expected_answer,
    last_answer,
    open_chat,
    rendered_text,
    wait_finished,
    wait_for_text,
)
from tests.support.proxy import TcpProxy

REFUSE_S = 1.0  # long enough for several failed reconnects, short enough for a quick test


def stored_rendering(context: BrowserContext, channel: str) -> str:
    """The answer as the answer page renders it from storage: the reference for 'exact'."""
    page = context.new_page()
    page.goto(f"/c/{channel}")
    answer = last_answer(page)
    wait_finished(answer)
    text = rendered_text(answer)
    page.close()
    return text


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_a_network_drop_mid_answer_resumes_without_losing_or_repeating_text(
        page: Page, context: BrowserContext, proxy: TcpProxy, transport: str, page_errors) -> None:
    open_chat(page)
    choose_transport(page, transport)
    question = f"Tell me about resuming over {transport} after the network drops"
    channel = ask(page, question)
    answer = last_answer(page)
    wait_for_text(answer, "You asked")
    before_drop = rendered_text(answer)

    assert proxy.drop_all(refuse_s=REFUSE_S) > 0, "the stream was not going through the proxy"
    expect(answer).to_have_attribute("data-state", "reconnecting")
    expect(answer.locator(".state")).to_have_text("Connection lost — reconnecting…")
    assert rendered_text(answer).startswith(before_drop.rstrip()), "the page lost text it had shown"

    wait_finished(answer)
    assert page.request.get(f"/api/channels/{channel}").json()["content"] == expected_answer(question)
    assert rendered_text(answer) == stored_rendering(context, channel)
    assert rendered_text(answer).count("You asked") == 1
    assert page_errors == []


def test_a_reload_mid_answer_picks_the_stream_up_again(page: Page, context: BrowserContext, page_errors) -> None:
    open_chat(page)
    question = "What happens when I reload while the answer is still being written?"
    channel = ask(page, question)
    wait_for_text(last_answer(page), "You asked")
    assert page.request.get(f"/api/channels/{channel}").json()["status"] == "running"

    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator("article.message.user")).to_have_text(question)
    answer = last_answer(page)
    assert answer.get_attribute("data-channel") == channel
    wait_finished(answer)
    assert rendered_text(answer) == stored_rendering(context, channel)
    assert page.request.get(f"/api/channels/{channel}").json()["content"] == expected_answer(question)
    assert page_errors == []
