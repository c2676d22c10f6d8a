"""Other sites in a real browser: a cross-site form and a same-site page on another port change nothing.

The victim uses the chat at ``http://127.0.0.1:<proxy>``. The attacker's pages are
served by a second server: at ``http://localhost:<port>`` (another site: the
browser withholds the SameSite=Lax cookie from its form post) and at
``http://127.0.0.1:<port>`` (the same site on another origin: the browser sends
the cookie). Neither may submit a question, subscribe a push endpoint, make a
user or replace the victim's cookie.
"""

from __future__ import annotations

import base64
import os
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from playwright.sync_api import BrowserContext, Page

from routes.auth import COOKIE
from tests.browser.chat_page import ask, last_answer, open_chat, wait_finished
from tests.support.proxy import TcpProxy
from tests.support.server import ServerProcess


class AttackerSite:
    """Serves whatever page a test sets, from 127.0.0.1 on a port of its own."""

    def __init__(self) -> None:
        self.page = b""
        self.hits = 0
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                site.hits += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(site.page)))
                self.end_headers()
                self.wfile.write(site.page)

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> AttackerSite:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def attacker() -> Iterator[AttackerSite]:
    with AttackerSite() as site:
        yield site


def push_keys() -> dict[str, str]:
    """A subscription's keys as a browser makes them: a P-256 point and 16 random bytes."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    point = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return {"p256dh": base64.urlsafe_b64encode(point).rstrip(b"=").decode(),
            "auth": base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()}


def victim_state(context: BrowserContext, page: Page, chime: ServerProcess) -> dict[str, object]:
    token = next(c["value"] for c in context.cookies() if c["name"] == COOKIE)
    conversations = page.request.get("/api/conversations").json()["conversations"]
    with sqlite3.connect(chime.data_dir / "chime.sqlite3") as db:
        user_id = db.execute("SELECT user_id FROM conversations WHERE id = ?",
                             (conversations[0]["id"],)).fetchone()[0]
        subscriptions = db.execute("SELECT COUNT(*) FROM push_subscriptions WHERE user_id = ?",
                                   (user_id,)).fetchone()[0]
        users = db.execute("SELECT COUNT(*) FROM users").fetchone()[0]
    return {"token": token, "conversations": [c["id"] for c in conversations],
            "subscriptions": subscriptions, "users": users}


def a_victim(context: BrowserContext, page: Page) -> None:
    open_chat(page)
    ask(page, "my private question")
    wait_finished(last_answer(page))


def test_a_cross_site_form_cannot_replace_the_victims_user(context: BrowserContext, page: Page, proxy: TcpProxy,
                                                           chime: ServerProcess, attacker: AttackerSite) -> None:
    a_victim(context, page)
    before = victim_state(context, page, chime)
    # enctype=text/plain posts "name=value": the attacker shapes that into a JSON body.
    attacker.page = (
        '<form id=f method=POST enctype="text/plain" action="%s/api/chat">'  # noqa: UP031  # braces below
        '<input name=\'{"message": "sent from another site", "x": "\' value=\'"}\'></form>'
        '<script>document.getElementById("f").submit()</script>' % proxy.url).encode()
    evil = context.new_page()
    with evil.expect_navigation(url=f"{proxy.url}/api/chat"):
        evil.goto(f"http://localhost:{attacker.port}/")
    assert attacker.hits == 1
    answer = orjson.loads(evil.locator("body").inner_text())
    assert answer["error"]["code"] == "cross_origin"
    assert victim_state(context, page, chime) == before


def test_a_same_site_page_on_another_port_cannot_act_as_the_victim(
        context: BrowserContext, page: Page, proxy: TcpProxy, chime: ServerProcess, attacker: AttackerSite) -> None:
    a_victim(context, page)
    before = victim_state(context, page, chime)
    subscription = {"endpoint": f"http://127.0.0.1:{attacker.port}/push/attacker", "keys": push_keys()}
    attacker.page = ("""<script>
        const chime = %s;
        const send = (path, body) => fetch(chime + path, {method: "POST", mode: "no-cors", credentials: "include",
            headers: {"Content-Type": "text/plain"}, body: JSON.stringify(body)}).then(() => "sent", e => String(e));
        window.done = Promise.all([
            send("/api/chat", {message: "sent from a sibling origin"}),
            send("/api/push/subscriptions", %s),
        ]);
    </script>""" % (orjson.dumps(proxy.url).decode(), orjson.dumps(subscription).decode())  # noqa: UP031  # JS braces
    ).encode()
    evil = context.new_page()
    evil.goto(f"http://127.0.0.1:{attacker.port}/")
    assert evil.evaluate("() => window.done") == ["sent", "sent"]  # both answered before this returns
    assert victim_state(context, page, chime) == before
