"""Keyboard, sidebar, Stop, phone and dark layouts, accessibility (axe-core);
screenshots go to artifacts/screenshots/."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.chat_page import (
    RICH_MARKDOWN,
    ask,
    last_answer,
    open_chat,
    show_markdown,
    wait_finished,
    wait_for_text,
)
from tests.support.waiting import wait_until

VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
# axe-core, for the tests only; evaluated through DevTools, which the page's CSP does not govern.
AXE = (Path(__file__).parent / "vendor" / "axe.min.js").read_text()
SERIOUS_VIOLATIONS = """async () => {
    const { violations } = await axe.run(document, { resultTypes: ["violations"] });
    return violations.filter(v => v.impact === "critical" || v.impact === "serious")
        .map(v => `${v.id} (${v.impact}): ${v.help} at ${v.nodes.slice(0, 3).map(n => n.target.join(" ")).join(", ")}`);
}"""


def assert_accessible(page: Page, where: str) -> None:
    if not page.evaluate("() => Boolean(window.axe)"):
        page.evaluate(AXE)
    violations = page.evaluate(SERIOUS_VIOLATIONS)
    assert violations == [], f"{where}: {violations}"


def test_keyboard_only_enter_sends_and_shift_enter_breaks_the_line(page: Page) -> None:
    open_chat(page)
    for _ in range(12):  # Tab through the page until the message box has focus
        if page.evaluate("document.activeElement.id") == "message":
            break
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "message"
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    assert page.locator("#message").input_value() == "first line\nsecond line"
    page.keyboard.press("Enter")
    expect(page.locator("article.message.user")).to_have_text("first line\nsecond line")
    wait_finished(last_answer(page))


def test_stop_cancels_the_running_answer(page: Page) -> None:
    open_chat(page)
    channel = ask(page, "A long answer I will stop")
    wait_for_text(last_answer(page), "You asked")
    expect(page.locator("#stop")).to_be_visible()
    page.click("#stop")
    wait_finished(last_answer(page), "cancelled")
    expect(page.locator("#stop")).to_be_hidden()
    assert page.request.get(f"/api/channels/{channel}").json()["status"] == "cancelled"


def test_the_sidebar_makes_switches_and_deletes_conversations(page: Page) -> None:
    open_chat(page)
    ask(page, "First conversation")
    wait_finished(last_answer(page))
    page.click("#new-chat")
    ask(page, "Second conversation")
    wait_finished(last_answer(page))
    items = page.locator("#conversations li")
    expect(items).to_have_count(2)

    page.locator(".conversation-link", has_text="First conversation").click()
    expect(page.locator("article.message.user")).to_have_text("First conversation")
    page.locator("#conversations li", has_text="Second conversation").locator(".delete").click()
    expect(items).to_have_count(1)
    page.click("#toast-close")  # no undo wanted: the deletion goes through now
    def titles() -> list[str]:
        return [c["title"] for c in page.request.get("/api/conversations").json()["conversations"]]

    wait_until(lambda: titles() == ["First conversation"], 10, "the deletion to reach the server")


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("size", list(VIEWPORTS))
def test_chat_and_answer_pages_fit_the_screen(make_context, screenshots: Path, size: str, scheme: str) -> None:
    context = make_context(viewport=VIEWPORTS[size], color_scheme=scheme, reduced_motion="reduce")
    page = context.new_page()
    open_chat(page)
    channel = ask(page, "Show me how **Chime** renders `code` and lists")
    wait_finished(last_answer(page))
    no_sideways_scroll = "document.documentElement.scrollWidth <= window.innerWidth"
    assert page.evaluate(no_sideways_scroll)
    page.screenshot(path=screenshots / f"chat-{size}-{scheme}.png")
    assert_accessible(page, "chat")
    # Headings, a table and a wide code block, as a model may write them.
    sample = show_markdown(page, RICH_MARKDOWN)
    sample.scroll_into_view_if_needed()
    assert page.evaluate(no_sideways_scroll)
    page.screenshot(path=screenshots / f"chat-{size}-{scheme}-rich.png")
    assert_accessible(page, "chat with a table and wide code")
    page.get_by_role("button", name="Settings").click()
    expect(page.locator("#settings")).to_be_visible()
    page.screenshot(path=screenshots / f"chat-{size}-{scheme}-settings.png")
    assert_accessible(page, "settings")
    page.keyboard.press("Escape")
    if size == "phone":
        page.click("#toggle-sidebar")
        expect(page.locator("#new-chat")).to_be_focused()
        page.screenshot(path=screenshots / f"chat-{size}-{scheme}-sidebar.png")
        assert_accessible(page, "drawer")
    page.goto(f"/c/{channel}")
    wait_finished(last_answer(page))
    assert page.evaluate(no_sideways_scroll)
    page.screenshot(path=screenshots / f"answer-{size}-{scheme}.png", full_page=True)
    assert_accessible(page, "answer page")
    show_markdown(page, RICH_MARKDOWN, "#answer").scroll_into_view_if_needed()
    assert page.evaluate(no_sideways_scroll)
    page.screenshot(path=screenshots / f"answer-{size}-{scheme}-rich.png")
    assert_accessible(page, "answer page with a table and wide code")
