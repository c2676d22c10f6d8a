"""Model output is untrusted: a hostile answer renders as harmless text, and the pages carry a CSP."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.browser.chat_page import ask, last_answer, open_chat, wait_finished

# The demo model quotes the question into its answer, so this question makes a hostile answer.
HOSTILE = ('<img src=x onerror="window.__pwned=1"> <script>window.__pwned=2</script> '
           '[click me](javascript:window.__pwned=3) <a href="javascript:window.__pwned=4">here</a>')


def test_a_hostile_answer_runs_no_script(page: Page, page_errors) -> None:
    open_chat(page)
    channel = ask(page, HOSTILE)
    answer = last_answer(page)
    wait_finished(answer)
    content = page.request.get(f"/api/channels/{channel}").json()["content"]
    assert "<script>window.__pwned=2</script>" in content and "onerror=" in content  # the answer is hostile

    markdown = answer.locator(".markdown")
    expect(markdown.locator("a", has_text="click me")).to_have_count(1)  # Markdown was rendered, not escaped
    assert markdown.locator("script, [onerror], iframe, object, embed").count() == 0
    hrefs = markdown.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href') || '')")
    assert not any(href.strip().lower().startswith("javascript:") for href in hrefs), hrefs
    for link in markdown.locator("a").all():
        link.click(modifiers=[])
    # The question is shown as typed: as text, never as markup.
    expect(page.locator("article.message.user")).to_have_text(HOSTILE)
    assert page.evaluate("() => window.__pwned") is None
    # Chromium checks the CSP as its HTML parser meets an inline handler, even in
    # the inert document the sanitiser parses into: those reports are the policy
    # doing its job, not a failure of the page.
    assert [e for e in page_errors if "Executing inline event handler violates" not in e] == []


def test_pages_carry_a_content_security_policy(page: Page) -> None:
    for path in ("/", "/c/some-channel", "/sw.js"):
        policy = page.request.get(path).headers["content-security-policy"]
        assert "script-src 'self'" in policy and "object-src 'none'" in policy
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
