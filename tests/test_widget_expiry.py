# ruff: noqa: F811  (the fixtures of tests/widget_support.py, imported by name)
"""`ChatWidget` after its connection expired on the server (an outage past `inactive_ttl`).

The widget drove its session. Its stream stops, the server's clock passes the TTL (the
connection expires and the session is detached), then the widget reconnects with the
same cid and gets `resumed: false`. It drives again when no one else took over, and
says that another client drives it, with Take over, when one did (rules.after_expiry).
"""

from __future__ import annotations

import asyncio

from jupyter_chatbridge.client import AsyncChatClient
from jupyter_chatbridge.clock import FakeScheduler
from jupyter_chatbridge.server.bridge import ChatBridge

from .support import eventually
from .widget_support import (  # noqa: F401 - fixtures
    ThreadedClock,
    WidgetFactory,
    connected,
    idle,
    make_widget,
    widget_clock,
)

TTL = 60.0  # tests/conftest.py's inactive_ttl


async def expire(widget: object, clock: FakeScheduler, bridge: ChatBridge) -> None:
    """Stop the widget's stream and let the server expire its connection."""
    stream = widget._link.client.stream  # type: ignore[attr-defined]
    asyncio.run_coroutine_threadsafe(stream.close(), widget._loop).result(10)  # type: ignore[attr-defined]
    cid = widget.cid  # type: ignore[attr-defined]
    await eventually(lambda: not bridge.connections.get(cid).active)
    clock.advance(TTL + 1)
    await eventually(lambda: bridge.connections.get(cid) is None)
    assert bridge.sessions.get("demo").driver is None  # detached by the expiry


async def test_a_driver_whose_connection_expired_drives_again(
    make_widget: WidgetFactory, bridge: ChatBridge, clock: FakeScheduler
) -> None:
    widget = make_widget()
    await connected(widget)
    assert bridge.sessions.get("demo").driver == widget.cid
    await expire(widget, clock, bridge)
    widget.reconnect()
    await eventually(lambda: bridge.sessions.get("demo").driver == widget.cid)
    await idle(widget)
    assert widget._panel.status_button.layout.display == "none"  # no Take over offered
    widget.send_message("still mine")
    await idle(widget)
    assert widget.summary()["messages"][-1]["text"] == "Echo: still mine"


async def test_a_driver_whose_connection_expired_shows_who_took_over(
    make_widget: WidgetFactory,
    bridge: ChatBridge,
    clock: FakeScheduler,
    server_url: str,
    token: str,
) -> None:
    widget = make_widget()
    await connected(widget)
    await expire(widget, clock, bridge)
    async with AsyncChatClient(server_url, token) as other:
        await other.session("demo", attach=True)  # took over while the widget was away
        widget.reconnect()
        await eventually(lambda: widget._panel.status_button.description == "Take over")
        assert "another client now drives" in widget._panel.status_text.value
        assert bridge.sessions.get("demo").driver == other.cid  # not taken back silently
        widget._panel.status_button.click()
        await eventually(lambda: bridge.sessions.get("demo").driver == widget.cid)
