"""The conversation list, the phone header and drawer, settings, and installing the app."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime, timedelta

from playwright.sync_api import Dialog, Page, Route, expect

from tests.browser.chat_page import open_chat
from tests.support.waiting import wait_until

LONG_TITLE = "How do I keep a streaming answer going when the phone locks its screen?"
IPHONE_SAFARI = ("Mozilla/5.0 (iPhone; CPU iPhone OS 18_5 like Mac OS X) AppleWebKit/605.1.15 "
                 "(KHTML, like Gecko) Version/18.5 Mobile/15E148 Safari/604.1")


def start_conversations(page: Page, titles: list[str]) -> dict[str, str]:
    """Start one conversation per title through the API (as this browser's user); title -> id."""
    ids = {}
    for title in titles:
        ids[title] = page.request.post("/api/chat", data={"message": title}).json()["conversation_id"]
    return ids


def titles_on_server(page: Page) -> list[str]:
    return [c["title"] for c in page.request.get("/api/conversations").json()["conversations"]]


def test_conversations_are_grouped_by_date_titled_in_full_searchable_and_renamable(page: Page, page_errors) -> None:
    titles = [LONG_TITLE, "Alpha recipe", "Beta trip plan", "Gamma notes"]
    ids = start_conversations(page, titles)
    # Relative to local noon today, so the groups do not depend on the hour the test runs.
    ages = {ids["Alpha recipe"]: timedelta(days=1, hours=1), ids["Beta trip plan"]: timedelta(days=3),
            ids["Gamma notes"]: timedelta(days=40)}

    def age_some(route: Route) -> None:
        # The server dates every conversation now: make some of them older.
        response = route.fetch()
        body = response.json()
        for conversation in body["conversations"]:
            if conversation["id"] in ages:
                noon = datetime.now().astimezone().replace(hour=12, minute=0, second=0, microsecond=0)
                conversation["updated_at"] = (noon - ages[conversation["id"]]).astimezone(UTC).isoformat()
        route.fulfill(response=response, body=json.dumps(body))

    page.route("**/api/conversations", age_some)
    open_chat(page)

    expect(page.locator(".group-heading")).to_have_text(["Today", "Yesterday", "Previous 7 days", "Older"])
    for heading, title in (("Today", LONG_TITLE), ("Yesterday", "Alpha recipe"),
                           ("Previous 7 days", "Beta trip plan"), ("Older", "Gamma notes")):
        group = page.locator(".conversation-group", has=page.get_by_role("heading", name=heading))
        expect(group.locator(".conversation-link")).to_have_text(title)

    # The whole title shows where there is room: nothing cut.
    link = page.locator(".conversation-link", has_text="How do I keep")
    assert link.evaluate("el => el.scrollHeight <= el.clientHeight + 1 && el.scrollWidth <= el.clientWidth + 1")

    search = page.get_by_role("searchbox", name="Search conversations")
    search.fill("BETA")
    expect(page.locator(".conversation-link")).to_have_text(["Beta trip plan"])
    search.fill("nothing like this")
    expect(page.locator(".conversation-link")).to_have_count(0)
    expect(page.locator("#no-matches")).to_have_text("No conversation matches “nothing like this”.")
    search.fill("")
    expect(page.locator(".conversation-link")).to_have_count(4)

    # Renaming is kept in this browser; the server's title stays.
    page.get_by_role("button", name="Rename “Alpha recipe”").click()
    box = page.get_by_role("textbox", name="New name for “Alpha recipe”")
    expect(box).to_be_focused()
    box.fill("Grandma's soup")
    box.press("Enter")
    renamed = page.locator(".conversation-link", has_text="Grandma's soup")
    expect(renamed).to_be_focused()
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    page.locator(".conversation-link", has_text="Grandma's soup").click()
    expect(page.locator("#conversation-title")).to_have_text("Grandma's soup")
    expect(page).to_have_title("Grandma's soup — Chime")
    assert "Alpha recipe" in titles_on_server(page)
    page.get_by_role("searchbox", name="Search conversations").fill("grandma")
    expect(page.locator(".conversation-link")).to_have_text(["Grandma's soup"])
    assert page_errors == []


def test_a_deletion_can_be_undone_then_goes_through(page: Page) -> None:
    start_conversations(page, ["Keep me", "Delete me"])
    open_chat(page)
    page.locator(".conversation-link", has_text="Delete me").click()
    expect(page.locator("article.message.user")).to_have_text("Delete me")
    confirmations: list[str] = []

    def dismiss(dialog: Dialog) -> None:
        confirmations.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", dismiss)

    page.get_by_role("button", name="Delete “Delete me”").click()
    expect(page.locator(".conversation-link")).to_have_text(["Keep me"])
    expect(page.locator("#toast")).to_contain_text("Deleted “Delete me”.")
    expect(page.get_by_role("button", name="Undo")).to_be_focused()
    expect(page.locator("#conversation-title")).to_have_text("New chat")  # it was open: the page moved on
    page.get_by_role("button", name="Undo").click()
    expect(page.locator(".conversation-link")).to_have_count(2)
    expect(page.locator("#conversation-title")).to_have_text("Delete me")
    expect(page.locator("#toast")).to_be_hidden()
    assert sorted(titles_on_server(page)) == ["Delete me", "Keep me"]

    page.get_by_role("button", name="Delete “Delete me”").click()
    page.get_by_role("button", name="Dismiss").click()
    wait_until(lambda: titles_on_server(page) == ["Keep me"], 10, "the deletion to reach the server")
    expect(page.locator(".conversation-link")).to_have_text(["Keep me"])
    assert confirmations == []  # no native confirm()


def test_the_phone_header_fits_one_line_and_the_drawer_dims_and_closes(make_context) -> None:
    page = make_context(viewport={"width": 390, "height": 844}).new_page()
    open_chat(page)
    header = page.locator(".topbar").bounding_box()
    assert header["height"] < 64, header
    for name in ("Conversations", "Chime", "New chat", "Settings"):
        control = page.locator(".topbar").get_by_role("link" if name == "Chime" else "button", name=name, exact=True)
        box = control.bounding_box()
        assert box and header["y"] <= box["y"] and box["y"] + box["height"] <= header["y"] + header["height"], name

    toggle = page.get_by_role("button", name="Conversations", exact=True)
    toggle.click()
    expect(page.locator("#sidebar")).to_be_visible()
    expect(page.locator("#scrim")).to_be_visible()
    assert page.evaluate("document.querySelector('main').inert && document.querySelector('.topbar').inert")
    page.get_by_role("button", name="Close conversations").click()
    expect(page.locator("#sidebar")).to_be_hidden()
    expect(page.locator("#scrim")).to_be_hidden()
    expect(toggle).to_be_focused()
    assert not page.evaluate("document.querySelector('main').inert")

    toggle.click()
    page.mouse.click(375, 600)  # on the dimmed page beside the drawer
    expect(page.locator("#sidebar")).to_be_hidden()


def test_settings_hold_the_transport_choice(page: Page) -> None:
    open_chat(page)
    expect(page.locator("#transport")).to_be_hidden()  # no longer in the header
    page.get_by_role("button", name="Settings").click()
    dialog = page.get_by_role("dialog", name="Settings")
    expect(dialog).to_be_visible()
    select = dialog.get_by_role("combobox", name="Stream answers over")
    expect(select).to_have_value("sse")
    select.select_option("ws")
    assert page.evaluate("localStorage.getItem('chime.transport')") == "ws"
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(page.get_by_role("button", name="Settings")).to_be_focused()


def test_on_ios_safari_the_push_opt_in_explains_add_to_home_screen(make_context) -> None:
    page = make_context(viewport={"width": 390, "height": 844}, user_agent=IPHONE_SAFARI,
                        is_mobile=True, has_touch=True).new_page()
    open_chat(page)
    page.get_by_role("button", name="Settings").click()
    expect(page.locator("#notify-status")).to_contain_text("Add to Home Screen")
    expect(page.locator("#notify")).to_be_disabled()


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_the_web_app_manifest_makes_chime_installable(page: Page) -> None:
    response = page.request.get("/manifest.webmanifest")
    assert response.status == 200
    assert response.headers["content-type"].startswith("application/manifest+json")
    manifest = response.json()
    assert manifest["name"] == "Chime" and manifest["short_name"] == "Chime"
    assert manifest["start_url"] == "/" and manifest["display"] == "standalone"
    assert manifest["theme_color"] and manifest["background_color"]
    sizes: dict[str, set[int]] = {}
    for icon in manifest["icons"]:
        image = page.request.get(icon["src"])
        assert image.status == 200 and image.headers["content-type"] == "image/png", icon
        width, height = png_size(image.body())
        assert icon["sizes"] == f"{width}x{height}"
        sizes.setdefault(icon.get("purpose", "any"), set()).add(width)
    assert {192, 512} <= sizes["any"] and 512 in sizes["maskable"]

    for path in ("/", "/c/some-channel"):
        page.goto(path)
        assert page.locator("link[rel=manifest]").get_attribute("href") == "/manifest.webmanifest"
        touch = page.locator("link[rel=apple-touch-icon]").get_attribute("href")
        assert touch is not None
        image = page.request.get(touch)
        assert image.status == 200 and png_size(image.body()) == (180, 180)
    # The browser itself reads the manifest the page links to.
    page.goto("/")
    cdp = page.context.new_cdp_session(page)
    parsed = cdp.send("Page.getAppManifest")
    assert parsed["url"].endswith("/manifest.webmanifest") and not parsed["errors"], parsed["errors"]
