"""Fixtures and helpers for the `ChatWidget` tests against the in-process server.

The widget's client runs on the widget's own thread and loop; the server runs on the
test's loop, so the tests never block that loop: they wait with `eventually`. Retry and
reconnect delays run on `ThreadedClock`, a fake clock that fires its timers on the
widget's loop. Test modules import the fixtures by name.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jupyter_chatbridge import ChatWidget

from .support import eventually


class _Timer:
    def __init__(self, when: float, callback: Callable[[], None], loop: Any) -> None:
        self.when, self.callback, self.loop = when, callback, loop
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        if not self.cancelled:
            self.callback()


class ThreadedClock:
    """A fake clock for a client on another thread: due timers fire on that client's loop."""

    def __init__(self) -> None:
        self._now = 1000.0
        self._lock = threading.Lock()
        self._heap: list[tuple[float, int, _Timer]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(self._now + max(0.0, delay), callback, asyncio.get_running_loop())
        with self._lock:
            heapq.heappush(self._heap, (timer.when, next(self._order), timer))
        return timer

    def waiting(self) -> list[float]:
        """Delays of the timers still due to fire, soonest first."""
        with self._lock:
            return sorted(t.when - self._now for _, _, t in self._heap if not t.cancelled)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
            due = []
            while self._heap and self._heap[0][0] <= self._now:
                due.append(heapq.heappop(self._heap)[2])
        for timer in due:
            if not timer.cancelled and not timer.loop.is_closed():
                timer.loop.call_soon_threadsafe(timer.fire)


WidgetFactory = Callable[..., ChatWidget]


@pytest.fixture
def widget_clock() -> ThreadedClock:
    return ThreadedClock()


@pytest.fixture
def make_widget(
    server_url: str, token: str, widget_clock: ThreadedClock, jp_asyncio_loop: Any
) -> Iterator[WidgetFactory]:
    made: list[ChatWidget] = []

    def factory(session_id: str = "demo", **kwargs: Any) -> ChatWidget:
        options = {"scheduler": widget_clock, **kwargs.pop("client_options", {})}
        widget = ChatWidget(
            session_id,
            kwargs.pop("server_url", server_url),
            kwargs.pop("token", token),
            client_options=options,
            **kwargs,
        )
        made.append(widget)
        return widget

    yield factory
    for widget in made:
        # Off the loop: closing waits for the widget's thread, which may be talking
        # to the server that this loop runs.
        jp_asyncio_loop.run_until_complete(close(widget))


async def close(widget: ChatWidget) -> None:
    await asyncio.get_running_loop().run_in_executor(None, widget.close)


def messages(widget: ChatWidget) -> list[dict[str, Any]]:
    return list(widget.summary()["messages"])


def own(widget: ChatWidget, text: str) -> dict[str, Any]:
    return next(m for m in messages(widget) if m["role"] == "user" and m["text"] == text)


def row(widget: ChatWidget, text: str) -> Any:
    """The widgets of the message whose text is `text`."""

    def find() -> Any:
        key = next(e.key for e in widget.view.entries if e.text == text)
        return widget._panel.rows.get(key)

    return widget._on_loop(find)


def row_html(widget: ChatWidget, text: str) -> str:
    """The rendered HTML of the message whose text is `text` ('' until drawn)."""
    found = row(widget, text)
    return str(found.html.value) if found is not None else ""


def retry_button(widget: ChatWidget, text: str) -> Any:
    found = row(widget, text)
    assert found.retry is not None and found.actions in found.container.children
    return found.retry


async def connected(widget: ChatWidget) -> None:
    await eventually(lambda: widget.summary()["status"] == "connected")
    await eventually(lambda: not widget._link.setting_up)


async def idle(widget: ChatWidget) -> None:
    """Wait until nothing is in flight and the panel is redrawn."""
    await eventually(lambda: widget._on_loop(widget._idle))


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def typed(widget: ChatWidget, text: str) -> None:
    """The browser committed the input's text (Enter or blur): a state update."""
    widget._panel.input.set_state({"value": text})


def enter(widget: ChatWidget) -> None:
    """The browser's Enter: a custom message, sent ahead of the text's update."""
    widget._panel.input._handle_custom_msg({"event": "submit"}, [])


def submit(widget: ChatWidget, text: str) -> None:
    """Type `text` and press Enter, in the order the browser reports it."""
    enter(widget)
    typed(widget, text)
