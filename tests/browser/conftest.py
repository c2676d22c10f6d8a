"""Real Chromium (Debian's, via Playwright) against the real server process, through a cuttable proxy.

One browser per test session; every test gets a fresh context (its own
cookies, so its own Chime user, service workers and permissions).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, sync_playwright

from tests.support.proxy import TcpProxy
from tests.support.server import ROOT, ServerProcess

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
# Slow enough to cut the network mid-answer, fast enough to keep the suite short.
DEMO_DELAY_MS = "25"
SSE_RETRY_MS = "200"
EXPECT_TIMEOUT_MS = 20_000


@pytest.fixture(scope="session")
def chime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"CHIME_DEMO_DELAY_MS": DEMO_DELAY_MS, "CHIME_SSE_RETRY_MS": SSE_RETRY_MS,
           "CHIME_PUSH_ALLOW_PRIVATE": "1", "CHIME_MAX_RUNNING_PER_USER": "8"}
    with ServerProcess(tmp_path_factory.mktemp("browser-server"), env) as server:
        yield server


@pytest.fixture(scope="session")
def proxy(chime: ServerProcess) -> Iterator[TcpProxy]:
    """The browser reaches the server only through this proxy, so tests can cut the network."""
    with TcpProxy(chime.port) as tcp_proxy:
        yield tcp_proxy


# Module scope: Playwright's sync API keeps an event loop running in this thread
# while it is open, and every async test after it would fail to start its own.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class PageErrors(list):
    """Uncaught exceptions and console errors of a context's pages."""

    def watch(self, page: Page) -> None:
        page.on("pageerror", lambda exc: self.append(f"pageerror: {exc}"))
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        # Chromium logs failed loads itself: a 401 before the first question (no
        # user yet), a connection the proxy cut. Those are not the page's errors.
        if message.type == "error" and not (message.text.startswith("Failed to load resource")
                                             or "net::ERR_" in message.text):
            self.append(f"console: {message.text}")


@pytest.fixture
def page_errors() -> PageErrors:
    return PageErrors()


@pytest.fixture
def make_context(browser: Browser, proxy: TcpProxy, page_errors: PageErrors) -> Iterator:
    contexts: list[BrowserContext] = []

    def make(**options) -> BrowserContext:
        context = browser.new_context(**{"base_url": proxy.url, **options})
        context.set_default_timeout(EXPECT_TIMEOUT_MS)
        context.on("page", page_errors.watch)
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def context(make_context) -> BrowserContext:
    return make_context()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
