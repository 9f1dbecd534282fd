"""`ChatWidget` against a real in-process server, without a browser.

The widget's client runs on the widget's own thread and loop; the server runs on
the test's loop, so the tests never block that loop: they wait with
`eventually`. Retry and reconnect delays run on a fake clock that fires its
timers on the widget's loop (fixtures and helpers: tests/widget_support.py).
"""

# ruff: noqa: F811  (the fixtures of tests/widget_support.py, imported by name)
from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import pytest

from jupyter_chatbridge import ChatWidget
from jupyter_chatbridge.client import AsyncChatClient
from jupyter_chatbridge.protocol import cid_from_hex
from jupyter_chatbridge.server.bridge import ChatBridge
from jupyter_chatbridge.testing import Fault, FaultPlan

from .agents import GateAgent
from .support import eventually
from .widget_support import (  # noqa: F401 - fixtures
    ThreadedClock,
    WidgetFactory,
    close,
    connected,
    enter,
    idle,
    make_widget,
    messages,
    own,
    retry_button,
    row,
    row_html,
    submit,
    typed,
    unused_port,
    widget_clock,
)

# -- identity --------------------------------------------------------------------------------


async def test_cid_is_the_model_id_as_a_uuid_and_the_widget_drives_the_session(
    make_widget: WidgetFactory, bridge: ChatBridge
) -> None:
    widget = make_widget()
    assert widget.cid == cid_from_hex(widget.model_id)
    assert widget.cid == f"cid-{uuid.UUID(hex=widget.model_id)}"
    await connected(widget)
    connection = bridge.connections.get(widget.cid)
    assert connection is not None and connection.stable
    session = bridge.sessions.get("demo")
    assert session is not None and session.driver == widget.cid
    assert widget.cid in session.watchers


# -- the conversation --------------------------------------------------------------------------


async def test_shows_the_conversation_so_far_and_streams_the_answer(
    make_widget: WidgetFactory, server_url: str, token: str
) -> None:
    async with AsyncChatClient(server_url, token) as other:
        earlier = await other.session("demo")
        assert await earlier.ask("earlier words") == "Echo: earlier words"
    widget = make_widget()
    await connected(widget)
    await eventually(lambda: len(messages(widget)) == 2)
    submit(widget, "  <b>bold</b> & more  ")
    assert widget._panel.input.value == ""  # cleared once queued
    await idle(widget)
    assert [(m["role"], m["text"]) for m in messages(widget)] == [
        ("user", "earlier words"),
        ("agent", "Echo: earlier words"),
        ("user", "<b>bold</b> & more"),
        ("agent", "Echo: <b>bold</b> & more"),
    ]
    assert own(widget, "<b>bold</b> & more")["delivery"] == "delivered"
    answer = row_html(widget, "Echo: <b>bold</b> & more")
    assert "Echo: &lt;b&gt;bold&lt;/b&gt; &amp; more" in answer and "<b>bold" not in answer
    assert "✓ delivered" in row_html(widget, "<b>bold</b> & more")
    # Empty input is not sent; the Send button sends like Enter.
    submit(widget, "   ")
    typed(widget, "by button")  # the blur as the button is pressed commits the text
    widget._panel.send_button.click()
    await eventually(lambda: widget._panel.input.value == "")
    await idle(widget)
    assert [m["text"] for m in messages(widget)][-2:] == ["by button", "Echo: by button"]


async def test_enter_sends_the_whole_text_even_when_its_update_trails(
    make_widget: WidgetFactory,
) -> None:
    # While a cell runs, ipywidgets holds back text updates, but not Enter's message:
    # the kernel sees a partial text, then Enter, then the whole text.
    widget = make_widget()
    await connected(widget)
    typed(widget, "Does the a")
    enter(widget)
    typed(widget, "Does the answer stream?")
    assert widget._panel.input.value == ""
    # A text committed by a blur, then Enter with nothing new: sent all the same.
    typed(widget, "committed before Enter")
    enter(widget)
    await eventually(lambda: widget._panel.input.value == "")
    await idle(widget)
    assert [m["text"] for m in messages(widget) if m["role"] == "user"] == [
        "Does the answer stream?",
        "committed before Enter",
    ]


@pytest.mark.chatbridge(agent_class=GateAgent)
async def test_thinking_shows_at_once_and_ends_with_the_answer(
    make_widget: WidgetFactory, gate: asyncio.Event
) -> None:
    widget = make_widget()
    await connected(widget)
    widget.send_message("take your time")
    assert widget.thinking  # before the server even answered
    await eventually(lambda: own(widget, "take your time")["delivery"] == "delivered")
    await eventually(lambda: any(m.get("text") == "working " for m in messages(widget)))
    assert widget.thinking
    await eventually(lambda: widget._panel.thinking_row.layout.display == "")
    gate.set()
    await idle(widget)
    assert not widget.thinking
    assert widget._panel.thinking_row.layout.display == "none"


# -- delivery states --------------------------------------------------------------------------


async def test_500_shows_delivery_delayed_until_its_own_retry_succeeds(
    make_widget: WidgetFactory,
    jp_serverapp: Any,
    bridge: ChatBridge,
    widget_clock: ThreadedClock,
    server_url: str,
    token: str,
) -> None:
    widget = make_widget()
    await connected(widget)
    jp_serverapp.web_app.settings["chatbridge_faults"] = FaultPlan().add("send", Fault.status(500))
    widget.send_message("first")
    await eventually(lambda: own(widget, "first")["delivery"] == "retrying")
    await eventually(lambda: "delivery delayed, retrying in 3 s" in row_html(widget, "first"))
    widget.send_message("second")  # queued behind it: ordered delivery
    # Unrelated events: another client's message and its answer, a stream cut and resume.
    async with AsyncChatClient(server_url, token) as other:
        assert await (await other.session("demo")).ask("elsewhere") == "Echo: elsewhere"
    await eventually(lambda: any(m["text"] == "Echo: elsewhere" for m in messages(widget)))
    bridge.streams.get(widget.cid).close()
    await eventually(lambda: widget.summary()["status"] == "reconnecting 1 of 6…")
    widget_clock.advance(min(widget_clock.waiting()))  # the reconnect's backoff, not the retry
    await eventually(lambda: widget.summary()["status"] == "connected")
    assert own(widget, "first")["delivery"] == "retrying"
    assert "delivery delayed" in row_html(widget, "first")
    assert own(widget, "second")["delivery"] == "pending"
    # Its own evidence: the retry is accepted.
    widget_clock.advance(3.0)
    await idle(widget)
    assert own(widget, "first")["delivery"] == "delivered"
    assert own(widget, "second")["delivery"] == "delivered"
    assert "✓ delivered" in row_html(widget, "first")
    texts = [m["text"] for m in messages(widget)]
    assert texts[-4:] == ["first", "Echo: first", "second", "Echo: second"]


async def test_429_waits_as_long_as_retry_after_says(
    make_widget: WidgetFactory, jp_serverapp: Any, widget_clock: ThreadedClock
) -> None:
    widget = make_widget()
    await connected(widget)
    jp_serverapp.web_app.settings["chatbridge_faults"] = FaultPlan().add(
        "send", Fault.status(429, retry_after=7)
    )
    widget.send_message("busy?")
    await eventually(lambda: "retrying in 7 s" in row_html(widget, "busy?"))
    assert "busy" in row_html(widget, "busy?")
    assert not widget.thinking  # not being answered while it waits
    widget_clock.advance(7.0)
    await idle(widget)
    assert own(widget, "busy?")["delivery"] == "delivered"


@pytest.mark.chatbridge(agent_class=GateAgent)
async def test_final_failure_offers_retry_clears_thinking_and_stays_until_retried(
    make_widget: WidgetFactory,
    jp_serverapp: Any,
    widget_clock: ThreadedClock,
    gate: asyncio.Event,
) -> None:
    widget = make_widget(client_options={"max_send_retries": 1})
    await connected(widget)
    jp_serverapp.web_app.settings["chatbridge_faults"] = FaultPlan().add(
        "send", Fault.status(500), Fault.status(503)
    )
    widget.send_message("lost")
    assert widget.thinking
    await eventually(lambda: own(widget, "lost")["delivery"] == "retrying")
    widget_clock.advance(3.0)
    await eventually(lambda: own(widget, "lost")["delivery"] == "failed")
    assert not widget.thinking
    await eventually(lambda: "not delivered" in row_html(widget, "lost"))
    button = retry_button(widget, "lost")
    # Another message's whole life does not clear this one's warning.
    gate.set()
    widget.send_message("fine")
    await idle(widget)
    assert own(widget, "fine")["delivery"] == "delivered"
    assert own(widget, "lost")["delivery"] == "failed"
    assert "not delivered" in row_html(widget, "lost")
    button.click()
    await idle(widget)
    assert own(widget, "lost")["delivery"] == "delivered"
    lost = row(widget, "lost")
    assert lost.container.children == (lost.html,)  # the Retry button is gone
    assert [m["text"] for m in messages(widget)][-2:] == ["lost", "working done"]


async def test_404_on_send_shows_not_delivered_and_the_session_unknown_banner(
    make_widget: WidgetFactory, bridge: ChatBridge
) -> None:
    widget = make_widget()
    await connected(widget)
    # The session vanishes without telling anyone (a server restart would do that).
    bridge.sessions.delete("demo")
    widget.send_message("anyone there?")
    await eventually(lambda: own(widget, "anyone there?")["delivery"] == "failed")
    await eventually(lambda: widget._panel.banner_box.layout.display == "")
    assert "no longer exists" in widget._panel.banner_text.value
    assert widget._panel.banner_button.description == "Start a new session"
    assert "session_unknown" in own(widget, "anyone there?")["error"]
    assert not widget.thinking
    widget._panel.banner_button.click()
    await eventually(lambda: widget.summary()["banner"] is None)
    await connected(widget)
    assert bridge.sessions.get("demo") is not None
    retry_button(widget, "anyone there?").click()
    await idle(widget)
    assert own(widget, "anyone there?")["delivery"] == "delivered"
    assert widget._panel.banner_box.layout.display == "none"


@pytest.mark.chatbridge(agent_class=GateAgent)
async def test_a_deleted_session_shows_the_banner_and_thinking_stops(
    make_widget: WidgetFactory, api: Any, gate: asyncio.Event
) -> None:
    widget = make_widget()
    await connected(widget)
    widget.send_message("hello")
    await eventually(lambda: own(widget, "hello")["delivery"] == "delivered")
    assert widget.thinking
    await api.ok("DELETE", "sessions", "demo")
    await eventually(lambda: widget.summary()["banner"] is not None)
    assert "it was deleted" in widget.summary()["banner"]
    assert not widget.thinking
    assert widget.summary()["status"] == "connected"  # the connection is fine
    await eventually(lambda: widget._panel.thinking_row.layout.display == "none")
    widget.start_new_session()
    await eventually(lambda: widget.summary()["banner"] is None)
    await connected(widget)
    gate.set()
    widget.send_message("again")
    await idle(widget)
    texts = [m["text"] for m in messages(widget)]
    assert texts[-3:] == ["New session “demo”", "again", "working done"]


async def test_a_full_outbox_refuses_at_the_input_and_keeps_the_text(
    make_widget: WidgetFactory, jp_serverapp: Any, widget_clock: ThreadedClock
) -> None:
    widget = make_widget(client_options={"max_queued": 1})
    await connected(widget)
    jp_serverapp.web_app.settings["chatbridge_faults"] = FaultPlan().add("send", Fault.status(503))
    widget.send_message("stuck for now")
    await eventually(lambda: own(widget, "stuck for now")["delivery"] == "retrying")
    submit(widget, "one too many")
    assert widget._panel.input.value == "one too many"  # nothing typed is lost
    await eventually(lambda: widget._panel.hint.layout.display == "")
    assert "not sent: send outbox is full" in widget._panel.hint.value
    widget_clock.advance(3.0)
    await eventually(lambda: own(widget, "stuck for now")["delivery"] == "delivered")
    enter(widget)  # the same text, already in the kernel: sent once the settle time passed
    await eventually(lambda: widget._panel.input.value == "")
    await eventually(lambda: widget._panel.hint.layout.display == "none")
    await idle(widget)
    assert own(widget, "one too many")["delivery"] == "delivered"


async def test_only_the_latest_messages_are_drawn(make_widget: WidgetFactory) -> None:
    widget = make_widget(max_messages=3)
    await connected(widget)
    for text in ("one", "two"):
        widget.send_message(text)
        await idle(widget)
    assert len(messages(widget)) == 4
    assert len(widget._panel.rows) == 3
    assert widget._panel.more.layout.display == ""
    assert "1 earlier message not shown" in widget._panel.more.value
    assert row_html(widget, "one") == ""  # not drawn


# -- the connection ----------------------------------------------------------------------------


async def test_unreachable_server_counts_attempts_then_goes_offline(
    make_widget: WidgetFactory, widget_clock: ThreadedClock, unused_port: int
) -> None:
    widget = make_widget(server_url=f"http://127.0.0.1:{unused_port}/")
    widget.send_message("hello?")
    for attempt in range(1, 7):
        await eventually(lambda a=attempt: widget.summary()["status"] == f"reconnecting {a} of 6…")
        widget_clock.advance(max(widget_clock.waiting()))
    await eventually(lambda: widget.summary()["status"] == "offline")
    await idle(widget)
    assert not widget.thinking
    assert widget._panel.status_button.layout.display == ""
    assert widget._panel.status_button.description == "Reconnect"
    assert "waiting for the connection" in row_html(widget, "hello?")


async def test_bad_token_shows_the_refused_banner(make_widget: WidgetFactory) -> None:
    widget = make_widget(token="wrong")
    await eventually(lambda: widget.summary()["status"] == "connection refused")
    await idle(widget)
    assert "403" in widget._panel.banner_text.value
    assert widget._panel.banner_button.description == "Reconnect"


async def test_reconnect_keeps_the_cid_and_catches_up(
    make_widget: WidgetFactory, widget_clock: ThreadedClock, bridge: ChatBridge
) -> None:
    widget = make_widget()
    await connected(widget)
    # The stream stops for good, as it does after six failed attempts.
    stream = widget._link.client.stream
    asyncio.run_coroutine_threadsafe(stream.close(), widget._loop)
    await eventually(lambda: widget.summary()["status"] == "closed")
    widget.send_message("sent while away")  # the POST works; its answer is not seen
    await eventually(lambda: own(widget, "sent while away")["delivery"] == "delivered")
    assert not widget.thinking  # nothing can arrive: no spinner
    widget.reconnect()  # what the Reconnect button does
    await idle(widget)
    assert [m["text"] for m in messages(widget)] == ["sent while away", "Echo: sent while away"]
    assert widget._link.client.cid == widget.cid
    assert len(bridge.connections) == 1


async def test_take_over_after_another_client_attached(
    make_widget: WidgetFactory, bridge: ChatBridge, server_url: str, token: str
) -> None:
    widget = make_widget()
    await connected(widget)
    async with AsyncChatClient(server_url, token) as other:
        await other.session("demo", attach=True)
        await eventually(lambda: widget._panel.status_button.description == "Take over")
        assert "another client now drives" in widget._panel.status_text.value
        assert bridge.sessions.get("demo").driver == other.cid
        widget._panel.status_button.click()
        await eventually(lambda: bridge.sessions.get("demo").driver == widget.cid)
        await eventually(lambda: widget._panel.status_button.layout.display == "none")


# -- lifecycle -------------------------------------------------------------------------------


async def test_close_leaves_nothing_running(make_widget: WidgetFactory, bridge: ChatBridge) -> None:
    widget = make_widget()
    await connected(widget)
    widget.send_message("bye")
    await idle(widget)
    children = [row.html for row in widget._panel.rows.values()]
    await close(widget)
    assert not widget._thread.is_alive()
    assert widget._loop.is_closed()
    assert not asyncio.all_tasks(widget._loop)
    assert not [t for t in threading.enumerate() if t.name.startswith("chatbridge-widget")]
    assert widget.comm is None and all(child.comm is None for child in children)
    await eventually(lambda: not bridge.connections.get(widget.cid).active)
    await close(widget)  # idempotent
    assert widget.summary()["status"] == "closed"


async def test_closing_from_the_front_end_stops_it_too(make_widget: WidgetFactory) -> None:
    widget = make_widget()
    await connected(widget)
    comm = widget.comm
    await asyncio.get_running_loop().run_in_executor(None, comm.handle_close, {"content": {}})
    assert not widget._thread.is_alive() and widget._loop.is_closed()
    assert widget.comm is None


def test_needs_a_server_or_says_how_to_name_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from jupyter_chatbridge.client import ServerNotFound

    monkeypatch.delenv("JUPYTER_CHATBRIDGE_URL", raising=False)
    monkeypatch.delenv("JPY_PARENT_PID", raising=False)
    before = threading.active_count()
    with pytest.raises(ServerNotFound, match="server_url="):
        ChatWidget("demo")
    with pytest.raises(ValueError, match="session id"):
        ChatWidget("no spaces", "http://127.0.0.1:1/")
    assert threading.active_count() == before
