"""The reader process's view of each server under test, behind one small interface.

`open_watchers(room, n)` returns n watchers that are connected and subscribed
(every later event of the room reaches them); `send(room, text)` is the agent
trigger, an HTTP POST in all three so the figures compare the fan-out, not the
trigger. Room names are fresh per run, so no run sees another's watchers.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from typing import Any

from .client import EIOWatcher, FramesCallback, HTTPConn, SSEReader, _noop
from .servers import ServerProcess

_names = itertools.count(1)

# Open connections in waves, so the servers' listen backlog (128) never overflows
# and no SYN waits a retransmit second.
OPEN_WAVE = 64


def new_cid() -> str:
    return f"cid-{uuid.uuid4()}"


def new_msg_id() -> str:
    return uuid.uuid4().hex


class System:
    name = ""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.port = server.port
        self.control = HTTPConn(self.port, server.auth_headers())

    async def new_room(self) -> str:
        return f"r{next(_names)}-{uuid.uuid4().hex[:6]}"

    async def open_watcher(self, room: str, on_frames: FramesCallback) -> Any:
        raise NotImplementedError

    async def open_watchers(
        self, room: str, n: int, on_frames: FramesCallback = _noop
    ) -> list[Any]:
        watchers: list[Any] = []
        try:
            for start in range(0, n, OPEN_WAVE):
                wave = range(start, min(n, start + OPEN_WAVE))
                watchers += await asyncio.gather(
                    *(self.open_watcher(room, on_frames) for _ in wave)
                )
            await self.subscribe(room, watchers)
        except BaseException:
            close_all(watchers)
            raise
        return watchers

    async def subscribe(self, room: str, watchers: list[Any]) -> None:
        """Make the watchers receive the room's events (a no-op where opening did it)."""

    async def send(
        self, room: str, text: str, client_msg_id: str | None = None, conn: HTTPConn | None = None
    ) -> dict[str, Any]:
        status, body = await (conn or self.control).request(
            "POST",
            self.send_path,
            {"sessionId": room, "clientMsgId": client_msg_id or new_msg_id(), "text": text},
        )
        if status not in (200, 202):
            raise RuntimeError(f"{self.name} send answered {status}: {body[:200]!r}")
        return json.loads(body)  # type: ignore[no-any-return]

    @property
    def send_path(self) -> str:
        return "/send"

    def close(self) -> None:
        self.control.close()


def close_all(watchers: list[Any]) -> None:
    for w in watchers:
        w.close()


class Ours(System):
    """jupyter_chatbridge: SSE stream with a cid, then `POST watch`."""

    name = "ours"

    @property
    def send_path(self) -> str:
        return f"{self.server.base}chatbridge/api/send"

    async def new_room(self) -> str:
        room = await super().new_room()
        status, body = await self.control.request(
            "POST", f"{self.server.base}chatbridge/api/sessions", {"sessionId": room}
        )
        if status != 201:
            raise RuntimeError(f"create session answered {status}: {body[:200]!r}")
        return room

    async def delete_room(self, room: str) -> None:
        await self.control.request("DELETE", f"{self.server.base}chatbridge/api/sessions/{room}")

    async def open_stream(
        self,
        on_frames: FramesCallback,
        cid: str | None = None,
        last_event_id: int | None = None,
    ) -> SSEReader:
        cid = cid or new_cid()
        headers = dict(self.server.auth_headers())
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        reader = await SSEReader.open(
            self.port, f"{self.server.base}chatbridge/api/events?cid={cid}", headers, on_frames
        )
        reader.state["cid"] = cid
        reader.state["welcome"] = json.loads(reader.opened.result().split(b"data: ", 1)[1])
        return reader

    async def open_watcher(self, room: str, on_frames: FramesCallback) -> SSEReader:
        return await self.open_stream(on_frames)

    async def watch(
        self, room: str, cid: str, conn: HTTPConn | None = None, after_seq: int | None = None
    ) -> int:
        body: dict[str, Any] = {"sessionId": room}
        if after_seq is not None:
            body["afterSeq"] = after_seq
        status, data = await (conn or self.control).request(
            "POST", f"{self.server.base}chatbridge/api/watch", body, {"X-Connection-ID": cid}
        )
        if status != 200:
            raise RuntimeError(f"watch answered {status}: {data[:200]!r}")
        return int(json.loads(data)["lastSeq"])

    async def subscribe(self, room: str, watchers: list[Any]) -> None:
        # A few keep-alive connections in parallel, like a crowd of browsers would.
        conns = [HTTPConn(self.port, self.server.auth_headers()) for _ in range(4)]
        try:

            async def worker(k: int) -> None:
                for w in watchers[k :: len(conns)]:
                    await self.watch(room, w.state["cid"], conns[k])

            await asyncio.gather(*(worker(k) for k in range(len(conns))))
        finally:
            for c in conns:
                c.close()


class Floor(System):
    """The raw Tornado SSE server: the stream joins the room when it opens."""

    name = "floor"

    async def open_watcher(self, room: str, on_frames: FramesCallback) -> SSEReader:
        return await SSEReader.open(self.port, f"/events?room={room}", None, on_frames)


class SocketIO(System):
    """python-socketio over a raw WebSocket (Engine.IO v4): connect, then `join` with an ack."""

    name = "socketio"

    async def open_watcher(self, room: str, on_frames: FramesCallback) -> EIOWatcher:
        watcher = EIOWatcher(on_frames)
        try:
            await watcher.connect(self.port)
            await asyncio.wait_for(watcher.emit("join", room), 30)
        except BaseException:
            watcher.close()
            raise
        return watcher


SYSTEMS = {"ours": Ours, "floor": Floor, "socketio": SocketIO}
