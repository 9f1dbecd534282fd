"""A stream that goes silent without a word (a half-open connection after a laptop sleeps
or the network changes): the page must notice and reconnect, as every client does
(client_rules.json, `heartbeat.idleTimeoutMs`).

An EventSource never shows SSE comments to the page, so the page asks for its heartbeat
as events (`heartbeat=event`). The server's clock is the test's fake one, so it writes a
ping only when the test advances it; the page's clock is Playwright's fake one, so the
idle timeout passes at once instead of in 45 s.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from jupyter_chatbridge.clock import FakeScheduler
from jupyter_chatbridge.protocol.rules import RULES
from jupyter_chatbridge.server.bridge import ChatBridge

from ..support import Api
from .conftest import Browser

expect = pytest.importorskip("playwright.async_api").expect

IDLE_MS = RULES["heartbeat"]["idleTimeoutMs"]
HEARTBEAT_S = 15  # the test server's heartbeat_interval (tests/conftest.py)


async def _debug(page: Any) -> dict[str, Any]:
    return await page.evaluate("chatbridge.debug()")  # type: ignore[no-any-return]


async def _connected_page(browser: Browser, api: Api) -> tuple[Any, Any]:
    """A page on session s1, its clock Playwright's fake one, connected: (page, status)."""
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    await browser.context.clock.install()
    page = await browser.open(fragment="session=s1")
    conn = page.locator("#conn-status")
    await expect(conn).to_have_attribute("data-state", "connected")
    return page, conn


async def test_a_silent_stream_is_dropped_and_reopened_missing_nothing(
    browser: Browser, api: Api, bridge: ChatBridge
) -> None:
    page, conn = await _connected_page(browser, api)
    await page.fill("#message", "before the silence")
    await page.press("#message", "Enter")
    await expect(page.locator(".msg.assistant")).to_have_text("Echo: before the silence")

    # The connection stays open but nothing comes: the server's clock writes no ping.
    await page.clock.run_for(IDLE_MS)
    await expect(conn).to_have_attribute("data-state", "reconnecting")
    state = await _debug(page)
    assert state["stream"]["idleDrops"] == 1 and state["stream"]["reconnectPending"] is True
    await api.ok(
        "POST",
        "send",
        body={"sessionId": "s1", "clientMsgId": "elsewhere-1", "text": "said meanwhile"},
    )
    await page.clock.run_for(math.ceil(state["stream"]["retryInMs"]))

    await expect(conn).to_have_attribute("data-state", "connected")
    await expect(page.locator(".msg.assistant")).to_have_text(
        ["Echo: before the silence", "Echo: said meanwhile"]
    )
    state = await _debug(page)
    welcome = state["welcomes"][-1]
    assert len(state["welcomes"]) == 2 and welcome["resumed"] is True and not welcome["gap"]
    session = bridge.sessions.get("s1")
    assert session is not None
    assert state["applied"] == [e.seq for e in session.log.after(0)]
    assert state["duplicatesDropped"] == 0


async def test_a_stream_that_only_pings_stays_open_past_the_idle_timeout(
    browser: Browser, api: Api, clock: FakeScheduler
) -> None:
    page, conn = await _connected_page(browser, api)
    beats = math.ceil(IDLE_MS / 1000 / HEARTBEAT_S) + 1  # past the idle timeout
    for beat in range(1, beats + 1):
        clock.advance(HEARTBEAT_S)  # the server writes its ping
        await page.wait_for_function(f"chatbridge.debug().stream.pings >= {beat}")
        await page.clock.run_for(HEARTBEAT_S * 1000)
    state = await _debug(page)
    assert state["stream"]["idleDrops"] == 0 and len(state["welcomes"]) == 1
    await expect(conn).to_have_attribute("data-state", "connected")
