"""An answer as people expect it: highlighted code with copy buttons, headings
in proportion, tables that scroll, follow-ups (regenerate, retry, continue),
autoscroll that lets the reader go, and nothing dead left behind when the server is down."""

from __future__ import annotations

import json

from playwright.sync_api import BrowserContext, Page, Route, expect

from tests.browser.chat_page import (
    ANSWER,
    RICH_MARKDOWN,
    ask,
    expected_answer,
    last_answer,
    open_chat,
    show_markdown,
    wait_finished,
    wait_for_text,
)
from tests.support.proxy import TcpProxy

CODE = ('import httpx\n\nwith httpx.stream("GET", events_url) as response:\n'
        '    for line in response.iter_lines():\n        print(line)')
NEAR_BOTTOM = ("(() => { const m = document.getElementById('messages'); "
               "return m.scrollHeight - m.scrollTop - m.clientHeight < 48; })()")


def conversation_of(page: Page, channel: str) -> dict:
    conversation_id = page.request.get(f"/api/channels/{channel}").json()["conversation_id"]
    return page.request.get(f"/api/conversations/{conversation_id}").json()


def test_code_is_highlighted_labelled_and_copied_and_so_is_the_answer(make_context, page_errors) -> None:
    context: BrowserContext = make_context()
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    open_chat(page)
    question = "Show me some code"
    ask(page, question)
    answer = last_answer(page)
    wait_finished(answer)

    block = answer.locator(".code-block")
    expect(block.locator(".code-language")).to_have_text("python")
    assert block.locator(".hljs-keyword").count() >= 3  # import, with, for: coloured
    code = block.locator("pre")
    expect(code).to_have_attribute("tabindex", "0")
    expect(code).to_have_accessible_name("python code")

    block.get_by_role("button", name="Copy python code").click()
    expect(block.locator(".copy-code")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == CODE

    answer.get_by_role("button", name="Copy the answer").click()
    expect(answer.locator(".copy-status")).to_have_text("Copied to the clipboard.")
    assert page.evaluate("navigator.clipboard.readText()") == expected_answer(question)

    # A model's "# H1" stays smaller than the app's own title.
    sample = show_markdown(page, RICH_MARKDOWN)
    size = "el => parseFloat(getComputedStyle(el).fontSize)"
    brand = page.locator(".brand").evaluate(size)
    h1 = sample.locator("h1").evaluate(size)
    h2 = sample.locator("h2").evaluate(size)
    assert h2 < h1 < brand, (h2, h1, brand)
    expect(sample.locator(".code-language")).to_have_text("javascript")
    assert page_errors == []


def test_tables_scroll_sideways_on_a_phone_and_wide_code_scrolls_from_the_keyboard(make_context) -> None:
    page = make_context(viewport={"width": 390, "height": 844}).new_page()
    open_chat(page)
    sample = show_markdown(page, RICH_MARKDOWN)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    table_box = sample.locator(".table-scroll")
    expect(table_box).to_have_attribute("tabindex", "0")
    expect(table_box).to_have_accessible_name("Table")
    assert table_box.evaluate("el => el.scrollWidth > el.clientWidth"), \
        "the table should overflow into its own scroller"
    # Words stay whole: each one-word cell is laid out on a single line.
    for word in ("Supercalifragilisticexpialidocious", "Antidisestablishmentarianism"):
        lines = sample.locator("td", has_text=word).evaluate(
            "td => { const r = document.createRange(); r.selectNodeContents(td); return r.getClientRects().length; }")
        assert lines == 1, f"{word} was broken over {lines} lines"

    pre = sample.locator("pre")
    assert pre.evaluate("el => el.scrollWidth > el.clientWidth")
    pre.focus()
    expect(pre).to_be_focused()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.wait_for_function("el => el.scrollLeft > 0", arg=pre.element_handle())


def test_regenerate_and_continue_after_a_stop_ask_again_in_the_same_conversation(page: Page, page_errors) -> None:
    open_chat(page)
    channel = ask(page, "Tell me a long story I will stop")
    first = last_answer(page)
    wait_for_text(first, "You asked")
    page.click("#stop")
    wait_finished(first, "cancelled")

    first.get_by_role("button", name="Continue the answer").click()
    continued = page.locator(ANSWER).nth(1)
    wait_finished(continued)
    expect(page.locator("article.message.user").last).to_have_text("Continue")
    expect(first.get_by_role("button", name="Continue the answer")).to_have_count(0)  # only the last answer offers more

    continued.get_by_role("button", name="Regenerate the answer").click()
    regenerated = page.locator(ANSWER).nth(2)
    wait_finished(regenerated)
    assert regenerated.get_attribute("data-channel") not in (channel, continued.get_attribute("data-channel"))

    messages = conversation_of(page, channel)["messages"]
    assert [(m["role"], m["content"]) for m in messages if m["role"] == "user"] == [
        ("user", "Tell me a long story I will stop"), ("user", "Continue"), ("user", "Continue")]
    assert messages[-1]["content"] == expected_answer("Continue")
    expect(page.locator("#conversations li")).to_have_count(1)
    assert page_errors == []


def fake_stream(terminal: str, data: dict) -> str:
    events = [("meta", {"channel": "x", "conversation_id": "x", "model": "demo"}),
              ("delta", {"content": "A partial answer"}), (terminal, data)]
    return "retry: 200\n\n" + "".join(f"id: {i}\nevent: {t}\ndata: {json.dumps(d)}\n\n"
                                      for i, (t, d) in enumerate(events, 1))


def serve(body: str):
    def handler(route: Route) -> None:
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}, body=body)
    return handler


def test_retry_after_an_interruption_or_an_error_asks_the_question_again(page: Page) -> None:
    open_chat(page)
    question = "An answer the server will not finish"
    for terminal, data, label in (("interrupted", {"reason": "server_lost"}, "Interrupted"),
                                  ("error", {"code": "model_error", "message": "The model failed."}, "Error")):
        page.route("**/api/channels/*/events*", serve(fake_stream(terminal, data)))
        if terminal == "interrupted":
            ask(page, question)
        else:
            last_answer(page).get_by_role("button", name="Regenerate the answer").click()
        broken = last_answer(page)
        wait_finished(broken, terminal)
        expect(broken.locator(".state")).to_have_text(label)
        page.unroute("**/api/channels/*/events*")
        broken.get_by_role("button", name="Retry the question").click()
        wait_finished(last_answer(page))
        expect(page.locator("article.message.user").last).to_have_text(question)
    expect(page.locator(ANSWER)).to_have_count(4)


def test_autoscroll_follows_the_answer_until_the_reader_scrolls_up(make_context) -> None:
    page = make_context(viewport={"width": 390, "height": 520}).new_page()
    open_chat(page)
    ask(page, "Autoscroll, please: " + "a question long enough to fill a small screen quickly " * 3)
    answer = last_answer(page)
    page.wait_for_function("() => { const m = document.getElementById('messages');"
                           " return m.scrollHeight > m.clientHeight + 150; }")
    assert page.evaluate(NEAR_BOTTOM), "the view should follow the streaming answer"
    expect(page.locator("#jump")).to_be_hidden()

    page.locator("#messages").hover()
    page.mouse.wheel(0, -400)
    expect(page.locator("#jump")).to_be_visible()
    expect(page.locator("#jump")).to_have_accessible_name("Jump to latest")
    top = page.evaluate("document.getElementById('messages').scrollTop")
    length = len(answer.locator(".markdown").inner_text())
    page.wait_for_function(
        "([n, a]) => a.dataset.state === 'done' || a.querySelector('.markdown').innerText.length > n + 20",
        arg=[length, answer.element_handle()])
    assert abs(page.evaluate("document.getElementById('messages').scrollTop") - top) <= 2, "the reader was yanked down"

    page.click("#jump")
    expect(page.locator("#jump")).to_be_hidden()
    assert page.evaluate(NEAR_BOTTOM)
    wait_finished(answer)
    assert page.evaluate(NEAR_BOTTOM), "back at the end, the view follows again"


def test_a_question_sent_while_the_server_is_down_stays_in_the_box(page: Page, proxy: TcpProxy) -> None:
    open_chat(page)
    question = "Is anyone there?"
    proxy.drop_all(refuse_s=2.0)
    box = page.locator("#message")
    box.fill(question)
    box.press("Enter")
    expect(page.locator("#composer-error")).to_contain_text("can't be reached")
    expect(page.locator("#composer-error")).to_contain_text("still in the box")
    expect(box).to_have_value(question)
    expect(page.locator("article.message")).to_have_count(0)  # no dead question in the transcript
    expect(page.locator("#empty-hint")).to_be_visible()

    page.wait_for_timeout(2100)
    box.press("Enter")
    wait_finished(last_answer(page))
    expect(page.locator("article.message.user")).to_have_count(1)
    expect(page.locator("#composer-error")).to_be_hidden()
