"""A store held by another live server: the widget and the page show the server's message.

Two real `jupyter server` processes on one store file: the second cannot take it
and answers every chatbridge endpoint `503 busy`, naming the file and the first
server's pid. A client of the second server shows that message in a banner,
never "session unknown" and never a silent retry loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_chatbridge import ChatWidget

from .chromium import chromium, page_url
from .server_process import ServerProcess
from .support import eventually


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    store = tmp_path / "shared.sqlite3"
    made = []
    for name in ("first", "second"):
        root = tmp_path / name
        root.mkdir()
        made.append(ServerProcess(root, f"--ChatBridgeApp.store_path={store}"))
    yield made[0], made[1]
    for server in made:
        server.stop()


def expected_message(first: ServerProcess) -> str:
    assert first.process is not None
    return f"is in use by another running server (pid {first.process.pid})"


@pytest.mark.timeout(120)
async def test_the_widget_shows_the_message_of_a_server_whose_store_is_held(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    first, second = servers
    await first.start()
    await second.start(ready="api/status")  # Jupyter's own API: chatbridge answers 503
    widget = ChatWidget("demo", second.url, second.token)
    try:

        def banner() -> str:
            return str(widget.summary()["banner"] or "")

        await eventually(lambda: expected_message(first) in banner(), 30)
        assert banner().startswith("The server cannot serve chat: ")
        assert "shared.sqlite3" in banner()
        summary = widget.summary()
        assert "no longer exists" not in str(summary)
        assert summary["status"] != "connected"
    finally:
        await asyncio.get_running_loop().run_in_executor(None, widget.close)


@pytest.mark.timeout(120)
async def test_the_page_shows_the_message_of_a_server_whose_store_is_held(
    servers: tuple[ServerProcess, ServerProcess], tmp_path: Path
) -> None:
    first, second = servers
    await first.start()
    await second.start(ready="api/status")
    from playwright.async_api import expect

    async with chromium(tmp_path / "profile") as context:
        page = await context.new_page()
        await page.goto(page_url(second, "demo"))
        banner = page.locator("#server-unavailable")
        await expect(banner).to_be_visible()
        await expect(banner).to_contain_text("The server cannot serve chat.")
        await expect(banner).to_contain_text(expected_message(first))
        await expect(banner).to_contain_text("shared.sqlite3")
        await expect(page.locator("#session-gone")).to_be_hidden()
        # The same page on the first server: no banner, it serves.
        other = await context.new_page()
        await other.goto(page_url(first, "demo"))
        await expect(other.locator("#conn-status")).to_have_text("connected")
        await expect(other.locator("#server-unavailable")).to_be_hidden()
