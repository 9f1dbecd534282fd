"""Fixtures for the browser tests: headless Debian Chromium driven by Python playwright.

The server under test is the in-process one of `tests/conftest.py` (its fake clock
included). Playwright's async API runs on that server's event loop: the browser is
started here with `jp_asyncio_loop.run_until_complete` and driven from the async tests,
which pytest-jupyter runs on the same loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from jupyter_chatbridge.testing.lab import (
    CHROMIUM,
    CHROMIUM_ARGS,
    REQUIRE_BROWSER,
    browser_missing,
    copy_to_docs,
)

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "page.png"


@dataclass
class Browser:
    """One Chromium with a fresh profile, pointed at the test server."""

    context: Any
    origin: str
    base_url: str
    token: str
    sockets: list[Any] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def page_url(self, query: str = "", fragment: str = "") -> str:
        url = f"{self.origin}{self.base_url}chatbridge/?token={self.token}"
        if query:
            url += f"&{query}"
        if fragment:
            url += f"#{fragment}"
        return url

    def ws_url(self, session_id: str) -> str:
        origin = self.origin.replace("http://", "ws://")
        return f"{origin}{self.base_url}chatbridge/api/sessions/{session_id}/ws"

    def sockets_to(self, session_id: str) -> list[Any]:
        """The WebSockets the page opened to one session."""
        return [s for s in self.sockets if s.url.endswith(f"/sessions/{session_id}/ws")]

    async def open(self, query: str = "", fragment: str = "") -> Any:
        """A new tab on the chat page, logged in through the URL token (a cookie after)."""
        page = await self.context.new_page()
        page.on("websocket", self._socket_opened)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("console", self._console)
        await page.goto(self.page_url(query, fragment))
        return page

    def _socket_opened(self, socket: Any) -> None:
        self.sockets.append(socket)

    def _console(self, message: Any) -> None:
        # Chromium logs every failed request, and the tests inject failures on purpose.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.problems.append(f"console error: {message.text}")

    async def shot(self, page: Any, name: str) -> Path:
        """Save a screenshot of the page's current state as a test artifact."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        await page.screenshot(path=str(path))
        return path


@pytest.fixture
def browser(
    jp_asyncio_loop: Any,
    jp_serverapp: Any,
    http_server: Any,  # binds the port
    jp_http_port: int,
    jp_base_url: str,
    tmp_path: Path,
) -> Iterator[Browser]:
    """Headless Chromium against the running test server; closed before the server stops."""
    missing = browser_missing()
    if missing is not None:
        if REQUIRE_BROWSER:
            pytest.fail(f"the browser tests cannot run: {missing}")
        pytest.skip(missing)
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=10_000)

    async def start() -> tuple[Any, Any]:
        playwright = await async_playwright().start()
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 960, "height": 640},
        )
        return playwright, context

    playwright, context = jp_asyncio_loop.run_until_complete(start())
    browser = Browser(
        context,
        f"http://127.0.0.1:{jp_http_port}",
        jp_base_url,
        jp_serverapp.identity_provider.token,
    )
    try:
        yield browser
    finally:

        async def stop() -> None:
            await context.close()
            await playwright.stop()

        jp_asyncio_loop.run_until_complete(stop())
    assert not browser.problems, browser.problems


def update_docs_screenshot(path: Path) -> None:
    """`CHATBRIDGE_UPDATE_DOCS=1 pytest tests/browser` refreshes the README's screenshot."""
    copy_to_docs(path, DOCS_SCREENSHOT)
