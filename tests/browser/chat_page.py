"""Driving the chat page the way a person does, and reading what it shows."""

from __future__ import annotations

from playwright.sync_api import Locator, Page, expect

from llm.demo import demo_reply

ANSWER = "article.message.assistant"
FINAL_STATES = ("done", "error", "cancelled", "interrupted")


def open_chat(page: Page, path: str = "/") -> None:
    page.goto(path)
    page.wait_for_selector("body[data-ready=true]")


def last_answer(page: Page) -> Locator:
    return page.locator(ANSWER).last


def ask(page: Page, question: str) -> str:
    """Type the question, press Enter, and return the new answer's channel id."""
    before = page.locator(ANSWER).count()
    box = page.locator("#message")
    box.fill(question)
    box.press("Enter")
    handle = page.wait_for_function(
        "n => document.querySelectorAll('article.message.assistant')[n]?.dataset.channel", arg=before)
    return handle.json_value()


def wait_for_text(answer: Locator, fragment: str) -> None:
    expect(answer.locator(".markdown")).to_contain_text(fragment)


def wait_finished(answer: Locator, state: str = "done") -> None:
    expect(answer).to_have_attribute("data-state", state)


def rendered_text(answer: Locator) -> str:
    return answer.locator(".markdown").inner_text()


def expected_answer(question: str) -> str:
    """The demo model's answer to ``question``, as the server stores it."""
    return demo_reply(question)


def choose_transport(page: Page, transport: str) -> None:
    """Pick how answers stream ("sse" or "ws") in the settings dialog, then close it."""
    page.click("#open-settings")
    page.select_option("#transport", transport)
    page.click("#close-settings")
    expect(page.locator("#settings")).to_be_hidden()


# Renders Markdown the way an answer is rendered, as a finished answer at the end
# of the page: for content the demo model never writes (headings, tables, wide code).
_SHOW_MARKDOWN = """async ([text, where]) => {
    const { AnswerView } = await import('/static/js/answer-view.js');
    const view = new AnswerView({ text, status: 'done' });
    view.element.dataset.sample = 'true';
    document.querySelector(where).append(view.element);
}"""

RICH_MARKDOWN = """# A model's top heading

## A second-level heading

| Term | Meaning | Example |
|---|---|---|
| Supercalifragilisticexpialidocious | an unbreakable word | Antidisestablishmentarianism |
| EventSource | the browser's streaming reader | `new EventSource(url)` |

```javascript
const aVeryLongLineOfCodeThatDoesNotFitOnAPhoneScreen = someFunction(argumentNumberOne, argumentNumberTwo, argumentNumberThree);
```
"""  # noqa: E501  # a line too wide for a phone is the point


def show_markdown(page: Page, text: str, where: str = "#messages") -> Locator:
    page.evaluate(_SHOW_MARKDOWN, [text, where])
    return page.locator("article[data-sample=true]").last
