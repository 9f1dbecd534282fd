"""Long conversations opened from seq 0 by the widget and by the page show everything once.

tests/test_big_history.py's sessions (a real server with every default: a
10,000-event session, a 10 MB session) opened by a fresh `ChatWidget` (its view,
through its own code) and by the chat page in headless Chromium (its DOM): each
displays exactly the conversation of the server's history, every message once,
in order.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jupyter_chatbridge import ChatWidget

from .chromium import chromium, page_url
from .displayed import (
    PAGE_ROWS_JS,
    Row,
    as_page_shows,
    expected_display,
    page_display,
    server_history,
    widget_display,
)
from .server_process import ServerProcess
from .test_big_history import BIG_WAIT, fill, one_word, words


@pytest.fixture
def server_factory(
    server_factory: Callable[..., ServerProcess],
) -> Callable[..., ServerProcess]:
    """The shared factory's servers, with an EchoAgent that answers at once."""
    return lambda *args: server_factory("--EchoAgent.chunk_delay=0", *args)


async def until_shown(read: Callable[[], object], expected: list[Row]) -> list[Row]:
    """Poll what a client displays until it has as many rows as history and its last
    answer is complete (the replay crossing loopback); returns what it shows then."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BIG_WAIT
    while True:
        shown: list[Row] = await read()  # type: ignore[misc]
        if len(shown) >= len(expected) and shown[-1] == expected[-1]:
            return shown
        assert loop.time() < deadline, f"{len(shown)} of {len(expected)} rows shown"
        await asyncio.sleep(0.1)


async def widget_opens(server: ServerProcess, session_id: str) -> list[Row]:
    widget = ChatWidget(session_id, server.url, server.token)
    try:
        expected = expected_display(await server_history(server, session_id))

        async def read() -> list[Row]:
            return widget_display(widget.summary())

        shown = await until_shown(read, expected)
        assert widget.summary()["banner"] is None
        return shown
    finally:
        await asyncio.get_running_loop().run_in_executor(None, widget.close)


async def page_opens(server: ServerProcess, session_id: str, profile: Path) -> list[Row]:
    async with chromium(profile) as context:
        page = await context.new_page()
        await page.goto(page_url(server, session_id))

        # Polled cheaply (the last seq applied, and the redraw done), then read once: ten
        # megabytes through the DevTools protocol at every poll would be the bottleneck.
        last_seq = (await server_history(server, session_id))[-1]["seq"]
        await page.wait_for_function(
            "(last) => { const p = window.chatbridge;"
            " return p && p.view && p.view.lastSeq === last && !p.renderQueued; }",
            arg=last_seq,
            timeout=BIG_WAIT * 1000,
            polling=100,
        )
        shown = page_display(await page.evaluate(PAGE_ROWS_JS))
        applied = await page.evaluate("() => window.chatbridge.debug().applied")
        history_seqs = [e["seq"] for e in await server_history(server, session_id)]
        assert applied == history_seqs  # every event applied once, in order
        return shown


async def answered(server: ServerProcess, session_id: str, events: int) -> list[dict[str, Any]]:
    """The history once it holds `events` events (fill() may return between two answers)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BIG_WAIT
    while len(history := await server_history(server, session_id)) < events:
        assert loop.time() < deadline, len(history)
        await asyncio.sleep(0.1)  # the agent answering in another process
    return history


@pytest.mark.timeout(240)
async def test_a_ten_thousand_event_session_opened_by_the_widget_and_the_page(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = server_factory()
    await server.start()
    await fill(server, "long", [words(196)] * 50)
    history = await answered(server, "long", 10_000)
    assert [e["seq"] for e in history] == list(range(1, 10_001))  # all kept: max_session_events
    expected = expected_display(history)
    assert len(expected) == 100
    assert await widget_opens(server, "long") == expected
    assert await page_opens(server, "long", tmp_path / "profile") == as_page_shows(expected)


@pytest.mark.timeout(240)
async def test_a_ten_megabyte_session_opened_by_the_widget_and_the_page(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = server_factory()
    await server.start()
    await fill(server, "huge", [one_word(64_000, i) for i in range(80)])
    history = await server_history(server, "huge")
    assert sum(len(json.dumps(e)) for e in history) > 10_000_000
    expected = expected_display(history)
    assert await widget_opens(server, "huge") == expected
    assert await page_opens(server, "huge", tmp_path / "profile") == as_page_shows(expected)
