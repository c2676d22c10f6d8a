"""The chat page in Chromium: ask, watch the answer stream in, rendered as Markdown."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.browser.chat_page import ask, expected_answer, last_answer, open_chat, rendered_text, wait_finished


def test_an_answer_streams_in_and_renders_as_markdown(page: Page, page_errors) -> None:
    open_chat(page)
    question = "What does Chime do with a dropped connection?"
    channel = ask(page, question)
    answer = last_answer(page)
    expect(answer.locator(".state")).to_have_text("Writing…")
    wait_finished(answer)
    expect(answer.locator(".model")).to_have_text("Model: demo")
    expect(answer.locator(".markdown pre code")).to_contain_text("import httpx")
    expect(answer.locator(".markdown ul li")).to_have_count(3)
    record = page.request.get(f"/api/channels/{channel}").json()
    assert record["content"] == expected_answer(question)
    assert "You asked: " + question in rendered_text(answer)
    assert page_errors == []
