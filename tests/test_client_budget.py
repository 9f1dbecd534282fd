"""The reconnect budget against a server that accepts and drops at once.

A tiny real tornado server answers the event stream with a welcome and then ends
the response, and the session WebSocket with an open and then a close. Neither
connection is healthy (never up for the stability time, never an event), so
the budget is not reset: the clients give up after 1 + 6 connections and say
"offline". Time is the fake clock's; nothing sleeps.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from tornado.httpserver import HTTPServer
from tornado.web import Application, RequestHandler
from tornado.websocket import WebSocketHandler

from jupyter_chatbridge.client import ConnectionStatus, EventStream, SessionSocket, StatusChange
from jupyter_chatbridge.client.policy import MAX_RECONNECT_ATTEMPTS, STABLE_TIME
from jupyter_chatbridge.client.transport import HttpTransport
from jupyter_chatbridge.clock import FakeScheduler

from .support import eventually


class _Counter:
    events = 0
    sockets = 0


class DroppingEvents(RequestHandler):
    """Accepts the stream (200 and a welcome) and ends it at once."""

    def get(self) -> None:
        _Counter.events += 1
        welcome = {
            "connectionId": self.get_argument("cid"),
            "epoch": "e1",
            "resumed": False,
            "protocol": 1,
        }
        self.set_header("Content-Type", "text/event-stream")
        self.write(f"event: welcome\ndata: {json.dumps(welcome)}\n\n")
        self.finish()


class DroppingSocket(WebSocketHandler):
    """Accepts the WebSocket and closes it at once with a transient code."""

    def open(self, *_: Any) -> None:
        _Counter.sockets += 1
        self.close(1011, "going down again")

    def on_message(self, message: str | bytes) -> None:  # pragma: no cover - never reached
        pass


@pytest.fixture
def dropping_server(jp_asyncio_loop: Any) -> Iterator[str]:
    _Counter.events = _Counter.sockets = 0
    app = Application(
        [
            (r"/chatbridge/api/events", DroppingEvents),
            (r"/chatbridge/api/sessions/([^/]+)/ws", DroppingSocket),
        ]
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    server = HTTPServer(app)
    server.add_sockets([sock])
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    server.stop()
    jp_asyncio_loop.run_until_complete(server.close_all_connections())


async def _ride_out_the_budget(
    status: Any, statuses: list[StatusChange], clock: FakeScheduler
) -> None:
    """Let every retry happen: wait until it waits, move the fake clock by its delay."""
    for attempt in range(1, MAX_RECONNECT_ATTEMPTS + 1):
        await eventually(
            lambda a=attempt: (
                statuses[-1].status is ConnectionStatus.RECONNECTING and statuses[-1].attempt == a
            )
        )
        # The dropped connection was up for no time at all: no budget reset.
        assert statuses[-1].max_attempts == MAX_RECONNECT_ATTEMPTS
        clock.advance(statuses[-1].retry_in or 0.0)
    await eventually(lambda: status() is ConnectionStatus.OFFLINE)


async def test_event_stream_gives_up_on_a_server_that_accepts_and_drops(
    dropping_server: str,
) -> None:
    clock = FakeScheduler()
    statuses: list[StatusChange] = []
    stream = EventStream(
        HttpTransport(dropping_server, None),
        on_event=lambda _: None,
        on_status=statuses.append,
        scheduler=clock,
    )
    stream.start()
    try:
        await _ride_out_the_budget(lambda: stream.status, statuses, clock)
        assert _Counter.events == 1 + MAX_RECONNECT_ATTEMPTS
        assert clock.pending == 0  # no timer left: it really stopped
        # The user's Reconnect: a fresh budget on the same cid.
        stream.restart()
        await eventually(
            lambda: (
                statuses[-1].status is ConnectionStatus.RECONNECTING and statuses[-1].attempt == 1
            )
        )
    finally:
        await stream.close()


async def test_session_socket_gives_up_on_a_server_that_accepts_and_drops(
    dropping_server: str,
) -> None:
    clock = FakeScheduler()
    statuses: list[StatusChange] = []
    sock = SessionSocket(
        HttpTransport(dropping_server, None), "s1", on_status=statuses.append, scheduler=clock
    )
    sock.start()
    try:
        await _ride_out_the_budget(lambda: sock.status, statuses, clock)
        await sock.wait_closed()
        assert sock.attempts_made == _Counter.sockets == 1 + MAX_RECONNECT_ATTEMPTS
        assert not sock.session_unknown and clock.pending == 0
    finally:
        await sock.close()


async def test_a_connection_up_for_the_stability_time_earns_a_fresh_budget(
    dropping_server: str,
) -> None:
    # The same server, but the fake clock moves past the stability time while the
    # connection is up: each drop is then a first failure again.
    clock = FakeScheduler()
    statuses: list[StatusChange] = []
    stream = EventStream(
        HttpTransport(dropping_server, None),
        on_event=lambda _: None,
        on_status=statuses.append,
        scheduler=clock,
    )
    original = stream._on_welcome

    def welcome_then_wait(data: dict[str, Any]) -> None:
        original(data)
        clock.advance(STABLE_TIME)  # "stayed up for 5 s" before the server drops it

    stream._on_welcome = welcome_then_wait  # type: ignore[method-assign]
    stream.start()
    try:
        for _ in range(MAX_RECONNECT_ATTEMPTS + 2):
            await eventually(lambda: statuses[-1].status is ConnectionStatus.RECONNECTING)
            assert statuses[-1].attempt == 1
            count = len(statuses)
            clock.advance(statuses[-1].retry_in or 0.0)
            await eventually(lambda c=count: len(statuses) > c + 1)
        assert stream.status is not ConnectionStatus.OFFLINE
    finally:
        await stream.close()
