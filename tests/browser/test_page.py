"""The chat page in a real browser (headless Chromium) against a real in-process server.

Every wait is on state the page shows (playwright `expect` / `wait_for_function`), never a
fixed sleep. The page's own timers run on real browser time: the send retry delay is
shortened with the page's `?retryDelay=` parameter instead of waiting the default 3 s.
"""

from __future__ import annotations

from typing import Any

import pytest

from jupyter_chatbridge.server.bridge import ChatBridge
from jupyter_chatbridge.testing import Fault, FaultPlan

from ..support import Api
from .conftest import Browser, update_docs_screenshot

# The `test` extra installs playwright; the `browser` fixture reports a missing Chromium.
expect = pytest.importorskip("playwright.async_api").expect


async def _debug(page: Any) -> dict[str, Any]:
    return await page.evaluate("chatbridge.debug()")  # type: ignore[no-any-return]


async def _connected(page: Any) -> None:
    await expect(page.locator("#conn-status")).to_have_attribute("data-state", "connected")


async def _live(page: Any) -> None:
    await page.wait_for_function(
        "chatbridge.debug().live && chatbridge.debug().live.state === 'live'"
    )


async def _send(page: Any, text: str) -> None:
    await page.fill("#message", text)
    await page.press("#message", "Enter")


def _user_seqs(bridge: ChatBridge, session_id: str) -> list[tuple[int, str]]:
    session = bridge.sessions.get(session_id)
    assert session is not None
    return [(e.seq, e.data) for e in session.log.after(0) if e.type == "user_message"]


async def test_page_streams_an_answer_and_a_reload_keeps_cid_and_conversation(
    browser: Browser, bridge: ChatBridge
) -> None:
    page = await browser.open()
    await _connected(page)
    await page.fill("#new-session-name", "demo")
    await page.click("#new-session")
    await expect(page.locator("#session-select")).to_have_value("demo")
    await expect(page.locator("#message")).to_be_enabled()

    await _send(page, "hello there")
    await expect(page.locator(".msg.assistant")).to_have_text("Echo: hello there")
    await _send(page, "does the answer stream back word by word?")
    await expect(page.locator(".msg.assistant").nth(1)).to_have_text(
        "Echo: does the answer stream back word by word?"
    )
    await expect(page.locator(".msg.user .delivery")).to_have_text(["delivered", "delivered"])
    await expect(page.locator("#thinking")).to_be_hidden()
    update_docs_screenshot(await browser.shot(page, "01-normal"))

    cid = await page.locator("#cid").text_content()
    assert cid and cid.startswith("cid-")
    assert [c.id for c in bridge.connections] == [cid]

    await page.reload()
    await _connected(page)
    await expect(page.locator("#cid")).to_have_text(cid)
    await expect(page.locator(".msg.assistant")).to_have_text(
        ["Echo: hello there", "Echo: does the answer stream back word by word?"]
    )
    await expect(page.locator(".msg.user")).to_have_count(2)
    state = await _debug(page)
    # The server took the reload for the same connection, and still holds only that one.
    assert state["welcomes"][-1]["connectionId"] == cid
    assert state["welcomes"][-1]["resumed"] is True
    assert [c.id for c in bridge.connections] == [cid]
    assert state["applied"] == list(range(1, bridge.sessions.get("demo").log.last_seq + 1))
    await browser.shot(page, "02-after-reload")


async def test_deleted_session_shows_session_unknown_and_never_reconnects(
    browser: Browser, api: Api
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "doomed"})
    page = await browser.open(fragment="session=doomed")
    await _connected(page)
    await _live(page)
    await _send(page, "still there?")
    await expect(page.locator(".msg.assistant")).to_have_text("Echo: still there?")

    await api.ok("DELETE", "sessions", "doomed")
    await expect(page.locator("#session-gone")).to_be_visible()
    await expect(page.locator("#gone-detail")).to_contain_text("closed with 4404")
    await expect(page.locator("#message")).to_be_disabled()
    state = await _debug(page)
    assert state["live"]["opened"] == 1
    assert state["live"]["reconnectPending"] is False
    assert len(browser.sockets_to("doomed")) == 1
    await browser.shot(page, "03-session-deleted")

    # Reconnect checks once more, and gives up at once again.
    await page.click("#gone-reconnect")
    await page.wait_for_function("chatbridge.debug().live.opened === 1 && chatbridge.debug().gone")
    await expect(page.locator("#gone-detail")).to_contain_text("closed with 4404")
    assert len(browser.sockets_to("doomed")) == 2
    assert (await _debug(page))["live"]["reconnectPending"] is False

    # A new session is the way out.
    await page.click("#gone-new")
    await expect(page.locator("#session-gone")).to_be_hidden()
    await expect(page.locator("#message")).to_be_enabled()
    assert len(browser.sockets_to("doomed")) == 2


async def test_unknown_session_is_reported_with_4404_within_a_second(browser: Browser) -> None:
    page = await browser.open(fragment="session=ghost")
    await expect(page.locator("#session-gone")).to_be_visible()
    await expect(page.locator("#gone-detail")).to_contain_text("closed with 4404")
    gone = (await _debug(page))["gone"]
    assert gone["code"] == 4404
    assert gone["afterMs"] < 1000
    assert (await _debug(page))["live"]["reconnectPending"] is False
    await browser.shot(page, "04-unknown-session")

    # The same from a bare WebSocket opened by the page: the close code is visible to it.
    raw = await page.evaluate(
        """async (url) => {
            const started = performance.now();
            const socket = new WebSocket(url);
            const event = await new Promise((resolve) => socket.addEventListener("close", resolve));
            return {code: event.code, reason: event.reason, ms: performance.now() - started};
        }""",
        browser.ws_url("ghost"),
    )
    assert raw["code"] == 4404 and raw["reason"] == "session unknown"
    assert raw["ms"] < 1000


async def test_send_failures_show_retrying_then_delivered_or_not_delivered(
    browser: Browser, api: Api, bridge: ChatBridge, jp_serverapp: Any
) -> None:
    plan = FaultPlan()
    jp_serverapp.web_app.settings["chatbridge_faults"] = plan
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    page = await browser.open(query="retryDelay=700", fragment="session=s1")
    await _connected(page)
    user = page.locator(".msg.user")

    # Transient failures: retried with the same clientMsgId until delivered.
    plan.add("send", Fault.status(500), Fault.status(429, retry_after=1))
    await _send(page, "first")
    await expect(user.nth(0)).to_have_attribute("data-state", "retrying")
    await expect(user.nth(0).locator(".delivery")).to_have_text("delivery delayed, retrying…")
    # The transcript rule (client_rules, "thinking"): not while a delivery is delayed.
    await expect(page.locator("#thinking")).to_be_hidden()
    await browser.shot(page, "05-retrying")
    await expect(user.nth(0)).to_have_attribute("data-state", "delivered")
    await expect(page.locator(".msg.assistant")).to_have_text("Echo: first")
    await expect(page.locator("#thinking")).to_be_hidden()
    await expect(user.nth(0)).to_have_attribute("data-history", "sending retrying delivered")
    await browser.shot(page, "06-delivered-after-retries")
    assert plan.remaining("send") == 0
    assert len(_user_seqs(bridge, "s1")) == 1

    # Every retry fails: "not delivered" after 1 + 3 attempts, and the spinner stops.
    plan.add("send", *[Fault.status(503)] * 4)
    await _send(page, "second")
    await expect(user.nth(1)).to_have_attribute("data-state", "failed")
    await expect(user.nth(1).locator(".delivery")).to_contain_text("not delivered")
    await expect(page.locator("#thinking")).to_be_hidden()
    assert plan.remaining("send") == 0
    assert len(plan.taken) == 2 + 4
    await browser.shot(page, "07-not-delivered")
    # Retry sends it again, under the same clientMsgId.
    await user.nth(1).get_by_role("button", name="Retry").click()
    await expect(user.nth(1)).to_have_attribute("data-state", "delivered")
    await expect(page.locator(".msg.assistant").nth(1)).to_have_text("Echo: second")

    # A permanent refusal is "not delivered" at once, with no retry.
    plan.add("send", Fault.status(400))
    await _send(page, "third")
    await expect(user.nth(2)).to_have_attribute("data-state", "failed")
    await expect(user.nth(2)).to_have_attribute("data-history", "sending failed")
    await expect(user.nth(2).get_by_role("button", name="Retry")).to_have_count(0)
    await expect(page.locator("#thinking")).to_be_hidden()

    # The retries ran while the stream stayed connected: it never dropped.
    state = await _debug(page)
    assert state["status"] == "connected" and len(state["welcomes"]) == 1
    texts = [data for _, data in _user_seqs(bridge, "s1")]
    assert len(texts) == 2 and '"first"' in texts[0] and '"second"' in texts[1]


async def test_the_101st_queued_message_is_refused_visibly(
    browser: Browser, api: Api, jp_serverapp: Any
) -> None:
    plan = FaultPlan().add("send", Fault.status(429, retry_after=60))  # holds the queue
    jp_serverapp.web_app.settings["chatbridge_faults"] = plan
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    page = await browser.open(fragment="session=s1")
    await _connected(page)
    await _send(page, "m0")
    await expect(page.locator(".msg.user").first).to_have_attribute("data-state", "retrying")
    await page.evaluate("for (let i = 1; i <= 100; i++) chatbridge.send(`m${i}`)")
    await expect(page.locator("#composer-error")).to_contain_text(
        "100 messages are already waiting"
    )
    await expect(page.locator(".msg.user")).to_have_count(100)
    assert (await _debug(page))["outbox"]["queued"] == 100
    assert await page.locator("#message").input_value() == "m100"  # kept, not lost
    await browser.shot(page, "08-outbox-full")


async def test_stopped_server_stream_resumes_with_nothing_missing_or_doubled(
    browser: Browser, api: Api, bridge: ChatBridge
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    page = await browser.open(fragment="session=s1")
    await _connected(page)
    await _send(page, "before the cut")
    await expect(page.locator(".msg.assistant")).to_have_text("Echo: before the cut")
    cid = await page.locator("#cid").text_content()

    # The server ends the page's stream; another client talks while the page is away.
    stream = bridge.streams.get(cid)
    assert stream is not None
    stream.close()
    await api.ok(
        "POST",
        "send",
        body={"sessionId": "s1", "clientMsgId": "elsewhere-1", "text": "sent while you were away"},
    )
    await expect(page.locator("#conn-status")).to_have_attribute("data-state", "reconnecting")
    await browser.shot(page, "09-reconnecting")

    await _connected(page)
    await expect(page.locator(".msg.assistant")).to_have_text(
        ["Echo: before the cut", "Echo: sent while you were away"]
    )
    await expect(page.locator(".msg.user")).to_have_count(2)
    state = await _debug(page)
    welcome = state["welcomes"][-1]
    assert welcome["resumed"] is True and welcome["replayed"] > 0 and welcome["gap"] is False
    session = bridge.sessions.get("s1")
    assert state["applied"] == [e.seq for e in session.log.after(0)]
    assert state["duplicatesDropped"] == 0
    await browser.shot(page, "10-resumed")


async def test_a_duplicated_tab_gets_its_own_cid(browser: Browser, bridge: ChatBridge) -> None:
    first = await browser.open()
    await _connected(first)
    cid = await first.locator("#cid").text_content()
    # "Duplicate tab" copies sessionStorage, and the cid with it.
    second = await browser.context.new_page()
    key = f"chatbridge:{browser.base_url}:cid"
    await second.add_init_script(f"sessionStorage.setItem({key!r}, {cid!r})")
    await second.goto(browser.page_url())
    await _connected(second)
    other = await second.locator("#cid").text_content()
    assert other and other.startswith("cid-") and other != cid
    assert (await _debug(second))["cidRenewals"] == 1  # it saw the copied cid taken
    # The first tab kept its cid and its stream: it was never displaced.
    state = await _debug(first)
    assert state["cidRenewals"] == 0 and state["status"] == "connected"
    assert [w["connectionId"] for w in state["welcomes"]] == [cid]
    assert {c.id for c in bridge.connections} == {cid, other}
    assert bridge.streams.get(cid) is not None and bridge.streams.get(other) is not None


async def test_a_transient_socket_close_reconnects_the_live_view(
    browser: Browser, api: Api, bridge: ChatBridge
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    page = await browser.open(fragment="session=s1")
    await _live(page)
    for socket in list(bridge.fanout.sockets["s1"]):
        bridge.remove_socket("s1", socket)
        socket.end(1011, "server hiccup")
    await expect(page.locator("#live-status")).to_contain_text("reconnecting, attempt 1 of 6")
    await browser.shot(page, "11-live-view-reconnecting")
    await expect(page.locator("#live-status")).to_be_hidden()
    await _live(page)
    assert len(browser.sockets_to("s1")) == 2
    assert (await _debug(page))["gone"] is None


async def test_a_frame_past_a_hole_waits_for_history_and_nothing_is_shown_twice(
    browser: Browser, api: Api, bridge: ChatBridge
) -> None:
    await api.ok("POST", "sessions", body={"sessionId": "s1"})
    page = await browser.open(fragment="session=s1")
    await _connected(page)
    await _send(page, "first")
    await expect(page.locator(".msg.assistant")).to_have_text("Echo: first")
    seen = (await _debug(page))["lastSeq"]

    # The page stops listening while another client sends twice; then a frame from past
    # the hole reaches it (as a replay racing live frames can).
    await page.evaluate("chatbridge.stream.stop()")
    for n in (1, 2):
        body = {"sessionId": "s1", "clientMsgId": f"elsewhere-{n}", "text": f"other {n}"}
        await api.ok("POST", "send", body=body)
    history = await api.ok("GET", "sessions", "s1", "events", params={"after": str(seen)})
    late = next(e for e in history["events"] if e.get("clientMsgId") == "elsewhere-2")
    assert late["seq"] > seen + 1
    gap = await page.evaluate(
        "(e) => { chatbridge.onSessionEvent(e); return chatbridge.view.gap }", late
    )
    # Held, not shown: the transcript names the hole, and the page asks history for it.
    assert gap == {"after": seen, "before": late["seq"]}
    await expect(page.locator(".msg.user")).to_have_count(3)
    await expect(page.locator(".msg.user .text")).to_have_text(["first", "other 1", "other 2"])

    # The stream comes back and replays what the page already took from history: each
    # seq applied once, in order, and every answer shown once.
    await page.evaluate("chatbridge.stream.reconnect()")
    await _connected(page)
    await expect(page.locator(".msg.assistant")).to_have_text(
        ["Echo: first", "Echo: other 1", "Echo: other 2"]
    )
    state = await _debug(page)
    session = bridge.sessions.get("s1")
    assert state["applied"] == [e.seq for e in session.log.after(0)]
    assert state["transcript"]["gap"] is None
