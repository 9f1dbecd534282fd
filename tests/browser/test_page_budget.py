"""The reconnect budget in the page: only a healthy connection refills it.

A server that accepts a connection and drops it at once must not keep the page retrying
forever (client_rules.json, "budget"): after 1 + maxAttempts connections without a stable
period or a live event, the page shows offline with Reconnect. Playwright routes play that
server, for the SSE stream and for the session WebSocket, and the page's clock is
Playwright's fake one, so the backoff delays pass at once instead of in a minute.
"""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from jupyter_chatbridge.protocol.rules import RULES

from ..support import Api
from .conftest import Browser

expect = pytest.importorskip("playwright.async_api").expect

MAX_ATTEMPTS = RULES["reconnect"]["maxAttempts"]
# Longer than any backoff delay (the cap): nothing may be pending after it.
PAST_ANY_DELAY_MS = RULES["reconnect"]["capMs"] + 1000


async def _debug(page: Any) -> dict[str, Any]:
    return await page.evaluate("chatbridge.debug()")  # type: ignore[no-any-return]


async def test_a_stream_accepted_and_dropped_each_time_goes_offline_with_reconnect(
    browser: Browser,
) -> None:
    streams: list[str] = []

    async def accept_then_drop(route: Any) -> None:
        cid = parse_qs(urlsplit(route.request.url).query)["cid"][0]
        streams.append(cid)
        welcome = {"connectionId": cid, "epoch": "e-flaky", "resumed": True, "gap": False}
        # A welcome, then the end of the response: the server accepted and dropped. `retry`
        # makes the browser's own first reconnect quick.
        body = f"retry: 20\nevent: welcome\ndata: {json.dumps(welcome)}\n\n"
        await route.fulfill(status=200, content_type="text/event-stream", body=body)

    await browser.context.clock.install()
    await browser.context.route("**/chatbridge/api/events?*", accept_then_drop)
    page = await browser.open()
    conn = page.locator("#conn-status")
    # Attempt 1 is the browser's own reconnect; from attempt 2 on the page waits its
    # backoff, which the fake clock runs through exactly (no further, so a connection is
    # never "up" across a jump of the clock).
    for attempt in range(2, MAX_ATTEMPTS + 1):
        await expect(conn).to_have_text(f"reconnecting, attempt {attempt} of {MAX_ATTEMPTS}…")
        state = await _debug(page)
        assert state["stream"]["reconnectPending"] is True
        await page.clock.run_for(math.ceil(state["stream"]["retryInMs"]))
    await expect(conn).to_have_attribute("data-state", "offline")
    # Every connection was welcomed, none was healthy: the first, then maxAttempts more.
    assert len(streams) == 1 + MAX_ATTEMPTS
    state = await _debug(page)
    assert state["stream"]["attempts"] == MAX_ATTEMPTS
    assert len(state["welcomes"]) == 1 + MAX_ATTEMPTS
    # Offline means it stopped: no reconnect is pending however long one waits.
    await page.clock.run_for(10 * PAST_ANY_DELAY_MS)
    assert len(streams) == 1 + MAX_ATTEMPTS
    await browser.shot(page, "12-offline-after-accept-then-drop")

    # The server is healthy again: Reconnect starts over with a fresh budget.
    await browser.context.unroute("**/chatbridge/api/events?*")
    await conn.get_by_role("button", name="Reconnect").click()
    await expect(conn).to_have_attribute("data-state", "connected")
    assert (await _debug(page))["stream"]["attempts"] == 0


async def test_a_live_socket_accepted_and_dropped_each_time_is_lost_with_reconnect(
    browser: Browser, api: Api
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    accepted: list[Any] = []
    healthy = False

    async def accept(ws: Any) -> None:
        if healthy:
            ws.connect_to_server()  # the real server's socket from now on
        else:
            accepted.append(ws)  # the route is the server: the page's socket opens

    await browser.context.clock.install()
    await browser.context.route_web_socket("**/chatbridge/api/sessions/s1/ws", accept)
    page = await browser.open(fragment="session=s1")
    live = page.locator("#live-status")
    for attempt in range(1, MAX_ATTEMPTS + 2):
        # The page saw its socket open; the server hangs up at once, before any frame.
        await expect(live).to_have_attribute("data-state", "live")
        await accepted[-1].close(code=1011, reason="flaky")
        if attempt > MAX_ATTEMPTS:
            break
        await expect(live).to_contain_text(f"reconnecting, attempt {attempt} of {MAX_ATTEMPTS}…")
        delay = await page.evaluate("chatbridge.liveState.delay")
        await page.clock.run_for(math.ceil(delay))
    await expect(live).to_contain_text(f"after {MAX_ATTEMPTS} reconnect attempts")
    state = await _debug(page)
    assert state["live"]["opened"] == len(accepted) == 1 + MAX_ATTEMPTS
    assert state["live"]["reconnectPending"] is False
    assert state["gone"] is None  # 1011 is not "session unknown"
    await page.clock.run_for(10 * PAST_ANY_DELAY_MS)
    assert len(accepted) == 1 + MAX_ATTEMPTS
    await browser.shot(page, "13-live-view-lost-after-accept-then-drop")

    healthy = True
    await live.get_by_role("button", name="Reconnect").click()
    # The status hides as soon as the page starts connecting again: wait for the socket.
    await expect(live).to_have_attribute("data-state", "live")
    await expect(live).to_be_hidden()
    assert (await _debug(page))["live"]["state"] == "live"
