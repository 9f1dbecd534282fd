"""Test clients that behave like the real network: raw sockets that can be cut at any moment."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

WAIT = 10.0  # seconds to wait for I/O before failing; never a timer under test


@dataclass(frozen=True)
class Frame:
    id: int | None
    event: str
    data: dict[str, Any]


def new_cid() -> str:
    return f"cid-{uuid.uuid4()}"


class Api:
    """REST calls returning (status, parsed JSON or None)."""

    def __init__(self, fetch: Any) -> None:
        self._fetch = fetch
        self.last_response: Any = None

    async def __call__(
        self,
        method: str,
        *parts: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        raw_body: bytes | str | None = None,
    ) -> tuple[int, Any]:
        if raw_body is None and body is not None:
            raw_body = json.dumps(body)
        if raw_body is None and method in {"POST", "PUT"}:
            raw_body = ""
        response = await self._fetch(
            "chatbridge",
            "api",
            *parts,
            method=method,
            body=raw_body,
            headers=headers,
            params=params,
            raise_error=False,
            allow_nonstandard_methods=True,
        )
        self.last_response = response
        text = response.body.decode() if response.body else ""
        return response.code, (json.loads(text) if text else None)

    async def ok(self, method: str, *parts: str, **kwargs: Any) -> Any:
        status, body = await self(method, *parts, **kwargs)
        assert 200 <= status < 300, (status, body)
        return body


class EventStream:
    """An SSE client on a raw socket: chunked decoding, frame parsing, abrupt cut."""

    def __init__(self, port: int, path: str, headers: dict[str, str]) -> None:
        self._port = port
        self._path = path
        self._headers = headers
        self.status: int | None = None
        self.response_headers: dict[str, str] = {}
        self.body = b""
        self.frames: list[Frame] = []
        self.comments = 0
        self.ended = False
        self._changed = asyncio.Event()
        self._reader_task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    @property
    def welcome(self) -> dict[str, Any]:
        assert self.frames and self.frames[0].event == "welcome", self.frames[:1]
        return self.frames[0].data

    @property
    def events(self) -> list[Frame]:
        """Frames after the welcome."""
        return [f for f in self.frames if f.event != "welcome"]

    def session_events(self, session_id: str | None = None) -> list[dict[str, Any]]:
        return [
            f.data
            for f in self.frames
            if "seq" in f.data and (session_id is None or f.data["sessionId"] == session_id)
        ]

    async def open(self) -> EventStream:
        reader, writer = await asyncio.open_connection("127.0.0.1", self._port)
        self._writer = writer
        lines = [f"GET {self._path} HTTP/1.1", f"Host: 127.0.0.1:{self._port}"]
        lines += [f"{k}: {v}" for k, v in self._headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        status_line = await asyncio.wait_for(reader.readline(), WAIT)
        self.status = int(status_line.split()[1])
        while True:
            line = (await asyncio.wait_for(reader.readline(), WAIT)).decode().strip()
            if not line:
                break
            key, _, value = line.partition(":")
            self.response_headers[key.strip().lower()] = value.strip()
        self._reader_task = asyncio.get_running_loop().create_task(self._read(reader))
        if self.status == 200:
            await self.wait_for(lambda s: bool(s.frames))
        else:
            await self.wait_for(lambda s: s.ended)
        return self

    async def _read(self, reader: asyncio.StreamReader) -> None:
        buffer = b""
        chunked = self.response_headers.get("transfer-encoding") == "chunked"
        try:
            while True:
                if chunked:
                    size_line = await reader.readline()
                    if not size_line:
                        break
                    size = int(size_line.strip() or b"0", 16)
                    if size == 0:
                        break
                    data = await reader.readexactly(size + 2)
                    data = data[:-2]
                else:
                    # An error answer: exactly Content-Length bytes on a kept-alive socket.
                    length = int(self.response_headers.get("content-length", "0"))
                    data = await reader.readexactly(length)
                    self.body += data
                    break
                self.body += data
                buffer += data
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    self._parse(block.decode())
                self._changed.set()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.ended = True
            self._changed.set()

    def _parse(self, block: str) -> None:
        frame_id, event, data = None, "message", []
        for line in block.split("\n"):
            if line.startswith(":"):
                self.comments += 1
                continue
            key, _, value = line.partition(": ")
            if key == "id":
                frame_id = int(value)
            elif key == "event":
                event = value
            elif key == "data":
                data.append(value)
        if data:
            self.frames.append(Frame(frame_id, event, json.loads("\n".join(data))))

    async def wait_for(
        self, predicate: Callable[[EventStream], bool], timeout: float = WAIT
    ) -> None:
        """Wait until the stream's state satisfies `predicate` (I/O, not a timer)."""

        async def _until() -> None:
            while not predicate(self):
                self._changed.clear()
                if self.ended and not predicate(self):
                    raise AssertionError("stream ended before the condition held")
                await self._changed.wait()

        await asyncio.wait_for(_until(), timeout)

    async def wait_events(self, count: int, session_id: str | None = None) -> list[dict[str, Any]]:
        await self.wait_for(lambda s: len(s.session_events(session_id)) >= count)
        return self.session_events(session_id)

    def cut(self) -> None:
        """Drop the TCP connection with no goodbye, like a sleeping laptop."""
        if self._writer is not None:
            self._writer.transport.abort()

    async def close(self) -> None:
        self.cut()
        if self._reader_task is not None:
            try:
                await asyncio.wait_for(self._reader_task, WAIT)
            except asyncio.TimeoutError:
                self._reader_task.cancel()


class StreamFactory:
    """Opens event streams with the server's token; remembers them for cleanup."""

    def __init__(self, port: int, base_url: str, token: str) -> None:
        self.port = port
        self.base_url = base_url
        self.token = token
        self._opened: list[EventStream] = []

    async def open(
        self,
        cid: str | None = None,
        *,
        last_event_id: int | None = None,
        query: str = "",
        auth: bool = True,
        headers: dict[str, str] | None = None,
    ) -> EventStream:
        params = []
        if cid is not None:
            params.append(f"cid={cid}")
        if query:
            params.append(query)
        path = f"{self.base_url}chatbridge/api/events"
        if params:
            path += "?" + "&".join(params)
        all_headers = dict(headers or {})
        if auth:
            all_headers["Authorization"] = f"token {self.token}"
        if last_event_id is not None:
            all_headers["Last-Event-ID"] = str(last_event_id)
        stream = EventStream(self.port, path, all_headers)
        self._opened.append(stream)
        return await stream.open()

    async def close_all(self) -> None:
        for stream in self._opened:
            await stream.close()


async def eventually(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait until `predicate()` holds: for I/O (a socket, a request) to take effect.

    Never used to wait for a timer: timers run on the fake clock and tests advance it.
    """

    async def _poll() -> None:
        while not predicate():
            await asyncio.sleep(0.002)

    await asyncio.wait_for(_poll(), timeout)
