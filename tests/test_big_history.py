"""Long conversations on a real server with every default: any history size replays.

A session with 10,000 events or 10 MB of history is watched from seq 0 (on the
event stream, and over the session WebSocket) and delivered whole, once, in
order; forty connections watching a 5 MB session do
not cost the server forty copies of it; and a client whose connection expired
during an outage while a megabyte of history piled up converges instead of
being dropped as a slow consumer over and over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

from jupyter_chatbridge.client import AsyncChatClient, ConnectionStatus, StatusChange
from jupyter_chatbridge.clock import FakeScheduler

from .server_process import ServerProcess, free_port
from .support import WAIT, eventually

Events = list[dict[str, Any]]
BIG_WAIT = 60.0  # seconds for megabytes to cross loopback on a busy 2-core machine


@pytest.fixture
def server_factory(
    server_factory: Callable[..., ServerProcess],
) -> Callable[..., ServerProcess]:
    """The shared factory's servers, with an EchoAgent that answers at once."""
    return lambda *args: server_factory("--EchoAgent.chunk_delay=0", *args)


async def rest(server: ServerProcess, method: str, path: str, body: Any = None, **headers: str):
    response = await AsyncHTTPClient().fetch(
        f"{server.url}chatbridge/api/{path}",
        method=method,
        body=None if body is None else json.dumps(body),
        headers={"Authorization": f"token {server.token}", **headers},
        raise_error=False,
        request_timeout=BIG_WAIT,
    )
    return response.code, (json.loads(response.body) if response.body else None)


async def fill(server: ServerProcess, session_id: str, texts: list[str]) -> int:
    """Send `texts` one by one, wait until every answer ended; returns the last seq."""
    status, _ = await rest(server, "POST", "sessions", {"sessionId": session_id})
    assert status in (201, 409)
    for text in texts:
        body = {"sessionId": session_id, "clientMsgId": uuid.uuid4().hex, "text": text}
        status, receipt = await rest(server, "POST", "send", body)
        assert status == 202, receipt
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BIG_WAIT
    while True:  # the agent answering in another process: I/O, not a timer
        _, described = await rest(server, "GET", f"sessions/{session_id}")
        if not described["running"]:
            _, tail = await rest(
                server, "GET", f"sessions/{session_id}/events?after={described['lastSeq'] - 1}"
            )
            if tail["events"] and tail["events"][-1]["type"] == "message_end":
                return int(described["lastSeq"])
        assert loop.time() < deadline, described
        await asyncio.sleep(0.05)


def words(count: int) -> str:
    return " ".join(f"w{i}" for i in range(count))


def one_word(size: int, tag: int) -> str:
    """A message of `size` bytes without spaces: EchoAgent answers it in one chunk."""
    return f"m{tag}-" + "x" * (size - len(f"m{tag}-"))


async def watched_from_zero(server: ServerProcess, session_id: str) -> Events:
    """What a fresh Python client shows when it opens the session from seq 0."""
    seen: Events = []
    client = AsyncChatClient(server.url, server.token, request_timeout=BIG_WAIT)
    try:
        session = await client.session(session_id, create=False, after_seq=None)
        session.add_listener(seen.append)
        history = await session.history()
        await client.stream.watch(session_id, 0)
        await eventually(lambda: len(seen) >= len(history), BIG_WAIT)
        assert seen == history
        return seen
    finally:
        await client.close()


async def test_a_ten_thousand_event_session_replays_whole_to_a_new_client(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    await server.start()
    last_seq = await fill(server, "long", [words(200)] * 50)
    assert last_seq > 10_000  # more than the default max_session_events: trimmed at the front
    seen = await watched_from_zero(server, "long")
    assert len(seen) == 10_000
    assert [e["seq"] for e in seen] == list(range(last_seq - 9_999, last_seq + 1))


async def test_a_ten_megabyte_session_replays_whole_to_a_new_client(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    await server.start()
    last_seq = await fill(server, "huge", [one_word(64_000, i) for i in range(80)])
    seen = await watched_from_zero(server, "huge")
    assert sum(len(json.dumps(e)) for e in seen) > 10_000_000
    assert [e["seq"] for e in seen] == list(range(1, last_seq + 1))


def server_rss(server: ServerProcess) -> int:
    """The server process's resident memory, in bytes."""
    assert server.process is not None
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


async def read_session_from_zero(server: ServerProcess, session_id: str, last_seq: int) -> int:
    """One short-lived connection: stream, watch from 0, read to `last_seq`, hang up.

    Returns how many session events it received. HTTP/1.0, so the body is the raw stream.
    """
    cid = f"cid-{uuid.uuid4()}"
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(
            f"GET /chatbridge/api/events?cid={cid} HTTP/1.0\r\n"
            f"Authorization: token {server.token}\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(b"HTTP/1.1 200"), head
        await asyncio.wait_for(reader.readuntil(b"\n\n"), WAIT)  # the welcome
        status, _ = await rest(
            server,
            "POST",
            "watch",
            {"sessionId": session_id, "afterSeq": 0},
            **{"X-Connection-ID": cid},
        )
        assert status == 200
        received, tail = 0, b""
        end = f'"seq":{last_seq},'.encode()
        while True:
            chunk = await asyncio.wait_for(reader.read(1 << 16), BIG_WAIT)
            assert chunk, f"stream ended after {received} events"
            data = tail + chunk
            received += data.count(b"\ndata: ") - tail.count(b"\ndata: ")
            if end in data:
                return received
            tail = data[-64:]
    finally:
        writer.transport.abort()


async def test_forty_connections_watching_a_big_session_do_not_copy_it(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    await server.start()
    last_seq = await fill(server, "shared", [one_word(64_000, i) for i in range(40)])
    before = server_rss(server)
    counts = await asyncio.gather(
        *(read_session_from_zero(server, "shared", last_seq) for _ in range(40))
    )
    assert counts == [last_seq] * 40
    grown = server_rss(server) - before
    assert grown < 30 * 1024 * 1024, f"server RSS grew by {grown / 2**20:.1f} MiB"


class CuttableProxy:
    """A loopback TCP proxy that can cut every connection and refuse new ones: an outage."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(1 << 16):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    async def cut(self) -> None:
        """Stop listening and drop every open connection with no goodbye."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()


async def test_an_outage_longer_than_the_ttl_with_a_megabyte_of_new_history_converges(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory("--ChatBridgeApp.inactive_ttl=1")
    await server.start()
    proxy = CuttableProxy(server.port)
    await proxy.start()
    clock = FakeScheduler()
    statuses: list[StatusChange] = []
    welcomes: Events = []
    client = AsyncChatClient(
        f"http://127.0.0.1:{proxy.port}/",
        server.token,
        scheduler=clock,
        on_status=statuses.append,
        on_frame=lambda kind, data: welcomes.append(data) if kind == "welcome" else None,
        request_timeout=BIG_WAIT,
    )
    seen: Events = []
    try:
        session = await client.session("outage")
        session.add_listener(seen.append)
        assert await session.ask("before") == "Echo: before"
        await proxy.cut()
        await eventually(lambda: client.stream.status is not ConnectionStatus.CONNECTED)
        # More than a megabyte of history arrives while the client is away ...
        last_seq = await fill(server, "outage", [one_word(64_000, i) for i in range(10)])
        # ... and its connection expires on the server (polled: a timer in another process).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while (
            await rest(
                server,
                "POST",
                "unwatch",
                {"sessionId": "outage"},
                **{"X-Connection-ID": client.cid},
            )
        )[0] != 404:
            assert loop.time() < deadline
            await asyncio.sleep(0.05)

        await proxy.start()
        clock.advance(statuses[-1].retry_in or 0)
        await eventually(lambda: len(seen) >= last_seq, BIG_WAIT)
        assert seen == await session.history()
        assert [e["seq"] for e in seen] == list(range(1, last_seq + 1))
        # One reconnect did it: no loop of drops and re-watches.
        assert len(welcomes) <= 3, welcomes
        assert welcomes[-1]["resumed"] is False
    finally:
        await client.close()
        await proxy.cut()


async def test_a_ten_megabyte_session_replays_whole_over_the_websocket(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    await server.start()
    last_seq = await fill(server, "huge", [one_word(64_000, i) for i in range(80)])
    _, history = await rest(server, "GET", f"sessions/huge/events?after=0&limit={last_seq}")
    socket = await websocket_connect(
        HTTPRequest(
            f"ws://127.0.0.1:{server.port}/chatbridge/api/sessions/huge/ws?afterSeq=0",
            headers={"Authorization": f"token {server.token}"},
        ),
        max_message_size=1 << 20,
    )
    try:
        received: Events = []
        while len(received) < last_seq:
            message = await asyncio.wait_for(socket.read_message(), BIG_WAIT)
            assert message is not None, f"closed after {len(received)} events"
            received.append(json.loads(message))
        assert received == history["events"]
    finally:
        socket.close()


async def test_a_websocket_that_stops_reading_is_closed_as_a_slow_consumer(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    await server.start()
    await rest(server, "POST", "sessions", {"sessionId": "stalled"})
    socket = await websocket_connect(
        HTTPRequest(
            f"ws://127.0.0.1:{server.port}/chatbridge/api/sessions/stalled/ws",
            headers={"Authorization": f"token {server.token}"},
        ),
        max_message_size=1 << 20,
    )
    watcher = AsyncChatClient(server.url, server.token, request_timeout=BIG_WAIT)
    try:
        seen: Events = []
        session = await watcher.session("stalled", create=False)
        session.add_listener(seen.append)
        # The socket's reader never reads, while far more than the kernel's socket
        # buffers and max_stream_buffer_bytes (1 MiB) of live events are sent to it.
        await fill(server, "stalled", [one_word(64_000, i) for i in range(60)])
        close_code = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BIG_WAIT
        while close_code is None:  # drain what was buffered before the close
            message = await asyncio.wait_for(socket.read_message(), max(0, deadline - loop.time()))
            if message is None:
                close_code = socket.close_code
        assert close_code == 1013 and socket.close_reason == "slow consumer"
        # Nobody else was hurt: the stream's watcher got every event.
        _, described = await rest(server, "GET", "sessions/stalled")
        await eventually(lambda: len(seen) == described["lastSeq"], BIG_WAIT)
    finally:
        socket.close()
        await watcher.close()
